"""What ``bench-client`` measures and how hard it may push: the targets, rates, sizes, budget."""
from __future__ import annotations

from dataclasses import dataclass

#: No option can make the client send faster than this, q/s.
HARD_MAX_RATE = 10_000.0
#: A throughput step losing more than this ends the ramp.
STEP_LOSS_LIMIT = 0.01
#: The highest rate reported as sustained loses at most this.
SUSTAINED_LOSS = 0.001


@dataclass(frozen=True)
class Target:
    label: str
    address: str
    port: int = 53


@dataclass(frozen=True)
class Settings:
    """How much the client asks, how fast, and for how long."""

    targets: tuple[Target, ...]
    #: q/s for the latency phases and the steady run.
    rate: float = 100.0
    #: Highest rate of the throughput ramp, q/s (at most :data:`HARD_MAX_RATE`).
    max_rate: float = 1000.0
    #: Names in the hit sample, at most.
    sample: int = 300
    #: Fresh names asked once each, per target.
    misses: int = 300
    #: Search-path lookups per target, and how many start per second.
    lookups: int = 100
    lookup_rate: float = 20.0
    #: ``A,AAAA``: getaddrinfo with AF_UNSPEC; ``A``: AF_INET.
    lookup_types: tuple[str, ...] = ("A", "AAAA")
    steady_seconds: float = 10.0
    step_seconds: float = 3.0
    #: Seconds an answer may take before it counts as a timeout.
    timeout: float = 2.0
    sockets: int = 8
    #: The whole run, every target, s.
    max_seconds: float = 600.0
    #: Discovery: at most this many PTR queries, at this rate.
    walk_max: int = 512
    walk_cidrs: tuple[str, ...] = ()
    discover_rate: float = 100.0
    #: Phases to run, by name (all by default).
    phases: tuple[str, ...] = ("cold", "hit", "miss", "searchpath", "steady", "throughput")
    seed: int | None = None

    def __post_init__(self) -> None:
        for what, r in (("rate", self.rate), ("max_rate", self.max_rate), ("discover_rate", self.discover_rate)):
            if not 0 < r <= HARD_MAX_RATE:
                raise ValueError(f"{what} {r:g} q/s is outside (0, {HARD_MAX_RATE:g}]")
