"""The phases, run for each target in turn, within a time budget and under a rate cap.

For each target, at ``rate`` queries per second unless said otherwise:

1. ``cold``: the sample once (the first look; a node cache may miss, or not,
   if other pods asked lately);
2. ``hit``: the same sample again, right after: answered from the target's cache;
3. ``miss``: fresh pod names, each asked once: every one a trip to the cluster DNS;
4. ``searchpath``: whole lookups of short names through the pod's search list, twice
   (``searchpath_cold``, then ``searchpath``: the names asked again);
5. ``steady``: the sample, cycled for ``steady_seconds``: timeouts and errors at that rate;
6. ``throughput``: the rate doubled from ``rate`` for ``step_seconds`` a step up
   to ``max_rate``, stopping at the first step losing more than 1 %.

Nothing runs past ``max_seconds`` in all, and ``stop`` (SIGTERM, SIGINT) ends
the current phase at once; the report then has what was measured so far.
"""
from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from . import loadgen, lookup, names
from .resolv import ResolvConf
from .settings import HARD_MAX_RATE, SUSTAINED_LOSS, STEP_LOSS_LIMIT, Settings, Target
from .stats import lookup_summary, run_summary

log = logging.getLogger("nodecache.benchclient")

@dataclass
class Sample:
    """The names asked, and where they came from."""

    queries: list[names.Query]
    lookups: list[str]
    sources: dict[str, int] = field(default_factory=dict)


class Runner:
    """Runs every phase against every target; :attr:`results` fills in as it goes."""

    def __init__(self, settings: Settings, conf: ResolvConf, stop: asyncio.Event, *,
                 progress: Callable[[str], None] = log.info) -> None:
        self.s, self.conf, self.stop = settings, conf, stop
        self.progress = progress
        self.start = time.monotonic()
        self.rng = random.Random(settings.seed)
        self.results: dict[str, Any] = {"targets": {}}
        #: Raw latencies (s) for the plots, by "target:phase"; not written to results.json.
        self.samples: dict[str, list[float]] = {}

    def remaining(self) -> float:
        return self.s.max_seconds - (time.monotonic() - self.start)

    def out_of_time(self) -> bool:
        return self.stop.is_set() or self.remaining() <= 0

    async def _load(self, target: Target, queries: Sequence[names.Query], *, rate: float, count: int,
                    keep: bool = False, max_seconds: float | None = None) -> loadgen.RunResult:
        wires = [loadgen.query_wire(n, t, edns=self.conf.edns0) for n, t in queries]
        budget = self.remaining() if max_seconds is None else min(max_seconds, self.remaining())
        return await loadgen.run(target.address, wires, rate=min(rate, HARD_MAX_RATE), count=count,
                                 timeout=self.s.timeout, max_seconds=max(0.0, budget), stop=self.stop,
                                 sockets=self.s.sockets, port=target.port, keep_answers=keep)

    # --- the sample ------------------------------------------------------------------
    async def discover(self, via: Target, domain: str, services: Sequence[str],
                       file_queries: Sequence[names.Query], file_lookups: Sequence[str]) -> Sample:
        """Build the sample from the cluster DNS at *via* and the lists given."""
        sources: dict[str, int] = {}
        known = names.dedupe([*names.well_known(domain), *names.service_queries(services, domain)])
        r = await self._load(via, known, rate=self.s.discover_rate, count=len(known), keep=True)
        found = names.read_answers(known, r.answers)
        sources["well known and listed services"] = len(found.answered)
        walk: list[names.Query] = []
        if self.s.walk_max > 0 and not self.out_of_time():
            cidrs = list(self.s.walk_cidrs) or names.default_walk(found.addresses)
            walk = names.ptr_walk(cidrs, self.s.walk_max)
            self.progress(f"discovery: PTR walk of {', '.join(cidrs) or 'nothing'} ({len(walk)} addresses)")
        walked = names.Answers()
        if walk:
            r = await self._load(via, walk, rate=self.s.discover_rate, count=len(walk), keep=True)
            walked = names.read_answers(walk, r.answers)
        sources["PTR walk (PTR records)"] = len(walked.answered)
        from_ptr = [(t, "A") for t in walked.targets]
        sources["PTR walk (names they point to)"] = len(from_ptr)
        srv = names.srv_walk([n for n, _ in from_ptr], domain, self.s.walk_max)
        srv_found = names.Answers()
        if srv and not self.out_of_time():
            self.progress(f"discovery: SRV walk ({len(srv)} queries)")
            r = await self._load(via, srv, rate=self.s.discover_rate, count=len(srv), keep=True)
            srv_found = names.read_answers(srv, r.answers)
        sources["SRV walk"] = len(srv_found.answered)
        sources["names file"] = len(file_queries)
        queries = names.dedupe([*file_queries, *found.answered, *from_ptr, *walked.answered,
                                *srv_found.answered, *[(t, "A") for t in found.targets]])
        if len(queries) > self.s.sample:
            queries = self.rng.sample(queries, self.s.sample)
        lookups = list(file_lookups)
        for n, t in queries:
            short = names.short_service_name(n, domain) if t == "A" else None
            if short and short not in lookups:
                lookups.append(short)
        return Sample(queries, lookups[: self.s.lookups], sources)

    # --- one target ------------------------------------------------------------------
    async def measure(self, target: Target, sample: Sample, domain: str, namespace: str) -> None:
        res: dict[str, Any] = {"address": target.address, "port": target.port, "status": "running"}
        self.results["targets"][target.label] = res
        s, q = self.s, sample.queries
        phases = set(s.phases)
        try:
            for phase in ("cold", "hit"):
                if phase in phases and q and not self.out_of_time():
                    self.progress(f"{target.label}: {phase}, {len(q)} names at {s.rate:g} q/s")
                    r = await self._load(target, q, rate=s.rate, count=len(q))
                    res[phase] = run_summary(r)
                    self.samples[f"{target.label}:{phase}"] = r.latencies
            if "miss" in phases and s.misses and not self.out_of_time():
                fresh = names.fresh_pod_names(s.misses, namespace, domain, self.rng)
                self.progress(f"{target.label}: miss, {len(fresh)} fresh names at {s.rate:g} q/s")
                r = await self._load(target, fresh, rate=s.rate, count=len(fresh))
                res["miss"] = run_summary(r)
                self.samples[f"{target.label}:miss"] = r.latencies
            if "searchpath" in phases and sample.lookups and not self.out_of_time():
                self.progress(f"{target.label}: searchpath, {len(sample.lookups)} lookups "
                              f"({'+'.join(s.lookup_types)}, ndots:{self.conf.ndots})")
                # Twice: the first pass may miss; the second is what a pod asking again sees.
                for key in ("searchpath_cold", "searchpath"):
                    if self.out_of_time():
                        break
                    lr = await lookup.run(target.address, sample.lookups, self.conf, qtypes=s.lookup_types,
                                          rate=s.lookup_rate, timeout=s.timeout,
                                          max_seconds=max(0.0, self.remaining()), stop=self.stop,
                                          port=target.port)
                    res[key] = lookup_summary(lr)
                    self.samples[f"{target.label}:{key}"] = lr.times
            if "steady" in phases and q and not self.out_of_time():
                count = int(s.rate * s.steady_seconds)
                self.progress(f"{target.label}: steady, {s.rate:g} q/s for {s.steady_seconds:g} s")
                r = await self._load(target, q, rate=s.rate, count=count)
                res["steady"] = run_summary(r)
            if "throughput" in phases and q and not self.out_of_time():
                res["throughput"] = await self._ramp(target, q)
            res["status"] = "interrupted" if self.stop.is_set() else (
                "out of time" if self.remaining() <= 0 else "ok")
        except OSError as exc:  # no route, bad address: this target only
            res["status"] = f"failed: {exc}"
            self.progress(f"{target.label}: failed: {exc}")

    async def _ramp(self, target: Target, q: Sequence[names.Query]) -> dict[str, Any]:
        s = self.s
        steps: list[dict[str, Any]] = []
        rate = s.rate
        while not self.out_of_time():
            rate = min(rate, s.max_rate)
            self.progress(f"{target.label}: throughput step {rate:g} q/s for {s.step_seconds:g} s")
            r = await self._load(target, q, rate=rate, count=int(rate * s.step_seconds))
            if r.stopped:
                break
            st = run_summary(r, seconds=s.step_seconds)
            st["loss"] = (r.sent - r.answered) / r.sent if r.sent else 1.0
            steps.append(st)
            if st["loss"] > STEP_LOSS_LIMIT or rate >= s.max_rate:
                break
            rate *= 2
        ok = [st for st in steps if st["loss"] <= SUSTAINED_LOSS]
        return {
            "steps": steps,
            "max_rate_cap_qps": s.max_rate,
            "sustained_qps": max((st["answered_qps"] for st in ok), default=None),
            "sustained_offered_qps": max((st["offered_qps"] for st in ok), default=None),
            "reached_cap": bool(steps) and steps[-1]["offered_qps"] >= s.max_rate and steps[-1]["loss"] <= SUSTAINED_LOSS,
        }
