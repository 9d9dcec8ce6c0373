"""When the agent counts as overloaded: a backlog on its UDP receive queues that lasts.

The agent samples how full its UDP receive queues are (0..1 of the buffer) at a
fixed interval while its event loop runs, and feeds each sample here with the
loop's time. Overload turns on miss shedding (``aio/resolver.py``).

Rule 1: one full sample is not overload. On a busy node the kernel gives the
CPU to other pods for tens of milliseconds at a time; queries arriving
meanwhile queue at the arrival rate, and the first sample after the pause sees
them. The loop reads them all within a few milliseconds once it runs again, so
the next sample finds the queue short. Shedding misses then would drop queries
of clients that did nothing wrong, for a pause that is already over.

Rule 2: overload is a queue that stays full while the loop runs: ``sustain``
samples in a row above ``fill``. Samples are counted, not timed, so that a
process that is itself starved of CPU (its samples come late) needs the same
evidence: a queue the loop does not drain between samples. A flood (more
queries than this process can answer, or a CPU share too small for the query
rate) keeps the queue full at every sample and turns shedding on after
``sustain`` samples.

Rule 3: overload ends ``hold`` seconds after the last full sample, so that
shedding does not flap while a flood goes on in bursts.

Rule 4: samples come every ``interval`` while a backlog builds or overload
lasts, and every ``calm_interval`` otherwise: a calm agent wakes up 10 times a
second for this, not 50, and a flood still turns shedding on within
``calm_interval + (sustain - 1) * interval`` (0.14 s).

Rule 5: queues found empty at ``quiet`` samples in a row (1 s of calm samples)
mean there is nothing to watch: the agent stops sampling until a datagram
arrives on one of its sockets, then samples every ``calm_interval`` again.
The wait ends after ``park`` seconds too, with one sample (so that sockets a
reload opened are watched): an idle agent wakes once a second for this, not
10 times, and a flood that starts while it waits still turns shedding on
within the 0.14 s of rule 4.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class OverloadDetector:
    """Turns queue-fill samples into the overloaded state (rules at the top of the module)."""

    #: A sample above this share of the receive buffer counts as full.
    fill: float = 0.125
    #: Full samples in a row that make a backlog (rule 2).
    sustain: int = 3
    #: Seconds after the last full sample before overload ends (rule 3).
    hold: float = 0.5
    #: Seconds between samples while the queue is full or the agent overloaded (rule 4).
    interval: float = 0.02
    #: Seconds between samples otherwise.
    calm_interval: float = 0.1
    #: Empty samples in a row after which sampling waits for a datagram (rule 5).
    quiet: int = 10
    #: Seconds sampling waits for a datagram at most (rule 5).
    park: float = 1.0
    #: The current state.
    overloaded: bool = False
    #: Full samples in a row so far.
    full_in_a_row: int = 0
    #: Time of the last full sample.
    last_full: float = 0.0
    #: Samples in a row that found every queue empty.
    empty_in_a_row: int = 0

    def sample(self, now: float, fill: float) -> bool:
        """Take one sample (*now* in seconds, *fill* 0..1); return whether the state changed."""
        before = self.overloaded
        self.empty_in_a_row = self.empty_in_a_row + 1 if fill == 0.0 else 0
        if fill > self.fill:
            self.full_in_a_row += 1
            self.last_full = now
            if self.full_in_a_row >= self.sustain:
                self.overloaded = True
        else:
            self.full_in_a_row = 0
            if self.overloaded and now - self.last_full >= self.hold:
                self.overloaded = False
        return self.overloaded != before

    def next_sample(self) -> float:
        """Seconds until the next sample is due (rule 4)."""
        return self.interval if self.full_in_a_row or self.overloaded else self.calm_interval

    def parks(self) -> bool:
        """Whether sampling waits for the next datagram now (rule 5)."""
        return self.empty_in_a_row >= self.quiet and not self.overloaded

    def datagram_came(self) -> None:
        """The wait ended with a datagram: ``quiet`` more samples before the next wait."""
        self.empty_in_a_row = 0
