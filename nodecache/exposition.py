"""Metric families and the Prometheus text exposition format (version 0.0.4).

What ``/metrics`` serves, written as the Go and Python Prometheus clients write
it (label names sorted, counters with ``_total``, histograms as ``_bucket``,
``_count``, ``_sum``, numbers as Go prints them), so that scrapers, recording
rules and the comparison with node-cache see the same text. Kept here rather
than taken from prometheus_client, whose import (an HTTP server, WSGI and email
parsing among it) is about 3 MB of each worker's memory (bench/missrate.py).

The ``process_*`` families are those of prometheus_client's (and Go's)
process collector, read from ``/proc/self``.
"""
from __future__ import annotations

import math
import os
import platform
import resource
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class Sample:
    """One line of a family: its full name (``_total``, ``_bucket``...), labels, value."""

    name: str
    labels: dict[str, str]
    value: float


class MetricFamily:
    """A named family of samples that share help text, type and label names."""

    #: The ``# TYPE`` word.
    type = "untyped"

    def __init__(self, name: str, documentation: str, *, labels: Sequence[str] = ()) -> None:
        self.name = name
        self.documentation = documentation
        self.label_names = tuple(labels)
        self.samples: list[Sample] = []

    @property
    def exposed_name(self) -> str:
        """The name in the ``# HELP`` and ``# TYPE`` lines."""
        return self.name


class _OneValue(MetricFamily):
    """A family of one number per label set; ``value`` fills the unlabelled one."""

    def __init__(self, name: str, documentation: str, value: float | None = None, *,
                 labels: Sequence[str] = ()) -> None:
        super().__init__(name, documentation, labels=labels)
        if value is not None:
            self.add_metric((), value)

    def add_metric(self, labels: Sequence[str], value: float) -> None:
        self.samples.append(Sample(self.exposed_name, dict(zip(self.label_names, labels)),
                                   float(value)))


class GaugeMetricFamily(_OneValue):
    type = "gauge"


class CounterMetricFamily(_OneValue):
    """A counter; ``name`` may end in ``_total`` or not, its samples always do."""

    type = "counter"

    def __init__(self, name: str, documentation: str, value: float | None = None, *,
                 labels: Sequence[str] = ()) -> None:
        super().__init__(name.removesuffix("_total"), documentation, value, labels=labels)

    @property
    def exposed_name(self) -> str:
        return self.name + "_total"


class HistogramMetricFamily(MetricFamily):
    type = "histogram"

    def add_metric(self, labels: Sequence[str], buckets: Sequence[tuple[str, float]],
                   sum_value: float) -> None:
        """One histogram: cumulative ``(le, count)`` buckets ending in ``+Inf``, and the sum."""
        base = dict(zip(self.label_names, labels))
        for le, count in buckets:
            self.samples.append(Sample(self.name + "_bucket", {**base, "le": le}, float(count)))
        self.samples.append(Sample(self.name + "_count", base, float(buckets[-1][1])))
        self.samples.append(Sample(self.name + "_sum", base, float(sum_value)))


class Collector(Protocol):
    def collect(self) -> Iterable[MetricFamily]: ...


class Registry:
    """The collectors ``/metrics`` shows, in the order they were added."""

    def __init__(self, collectors: Iterable[Collector] = ()) -> None:
        self.collectors = list(collectors)

    def collect(self) -> Iterable[MetricFamily]:
        for collector in self.collectors:
            yield from collector.collect()


def go_float(value: float) -> str:
    """A sample value as prometheus_client writes it: ``+Inf``, ``-Inf``, ``NaN``, else
    Python's shortest repr, in Go's exponent form (``1.234567e+06``) when that repr has
    more than six digits before the point."""
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if math.isnan(value):
        return "NaN"
    text = repr(float(value))
    dot = text.find(".")
    if value > 0 and dot > 6:
        mantissa = f"{text[0]}.{text[1:dot]}{text[dot + 1:]}".rstrip("0.")
        return f"{mantissa}e+{dot - 1:02d}"
    return text


def _escape_label(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def _line(sample: Sample) -> str:
    if not sample.labels:
        return f"{sample.name} {go_float(sample.value)}\n"
    labels = ",".join(f'{k}="{_escape_label(v)}"' for k, v in sorted(sample.labels.items()))
    return f"{sample.name}{{{labels}}} {go_float(sample.value)}\n"


def render(registry: Registry) -> bytes:
    """The text exposition of every family of ``registry``."""
    out = []
    for family in registry.collect():
        name = family.exposed_name
        doc = family.documentation.replace("\\", r"\\").replace("\n", r"\n")
        out.append(f"# HELP {name} {doc}\n# TYPE {name} {family.type}\n")
        out.extend(_line(s) for s in family.samples)
    return "".join(out).encode()


class ProcessCollector:
    """``process_*`` of this process (memory, CPU, start time, file descriptors).

    Nothing when ``/proc`` cannot be read (the families are left out, as the
    Prometheus clients do).
    """

    def __init__(self, proc: str = "/proc/self") -> None:
        self.proc = proc
        self._ticks = os.sysconf("SC_CLK_TCK")  # the unit of stat's times (proc(5))
        self._boot = _boot_time()

    def collect(self) -> Iterable[MetricFamily]:
        if self._boot is None:
            return []
        out: list[MetricFamily] = []
        try:
            with open(f"{self.proc}/stat", "rb") as f:
                # After the command name in parentheses: field 3 (state) onwards, proc(5).
                stat = f.read().rsplit(b")", 1)[-1].split()
            out += [
                GaugeMetricFamily("process_virtual_memory_bytes", "Virtual memory size in bytes.",
                                  float(stat[20])),
                GaugeMetricFamily("process_resident_memory_bytes",
                                  "Resident memory size in bytes.",
                                  float(stat[21]) * resource.getpagesize()),
                GaugeMetricFamily("process_start_time_seconds",
                                  "Start time of the process since unix epoch in seconds.",
                                  float(stat[19]) / self._ticks + self._boot),
                CounterMetricFamily("process_cpu_seconds_total",
                                    "Total user and system CPU time spent in seconds.",
                                    (float(stat[11]) + float(stat[12])) / self._ticks),
            ]
        except OSError:
            pass
        try:
            with open(f"{self.proc}/limits", "rb") as f:
                soft = next(line.split()[3] for line in f if line.startswith(b"Max open file"))
            out += [
                GaugeMetricFamily("process_open_fds", "Number of open file descriptors.",
                                  len(os.listdir(f"{self.proc}/fd"))),
                GaugeMetricFamily("process_max_fds", "Maximum number of open file descriptors.",
                                  float(soft)),
            ]
        except (OSError, StopIteration):
            pass
        return out


def _boot_time() -> float | None:
    """When the machine booted, Unix s (``btime`` of /proc/stat); None without /proc."""
    try:
        with open("/proc/stat", "rb") as f:
            for line in f:
                if line.startswith(b"btime "):
                    return float(line.split()[1])
    except OSError:
        pass
    return None


class PlatformCollector:
    """``python_info``: the interpreter, as prometheus_client's platform collector labels it."""

    def __init__(self) -> None:
        major, minor, patchlevel = platform.python_version_tuple()
        self._info = GaugeMetricFamily("python_info", "Python platform information",
                                       labels=("version", "implementation", "major", "minor",
                                               "patchlevel"))
        self._info.add_metric((platform.python_version(), platform.python_implementation(),
                               major, minor, patchlevel), 1)

    def collect(self) -> Iterable[MetricFamily]:
        return [self._info]
