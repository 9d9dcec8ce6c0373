"""Summaries of latency samples and run counts, as they go into results.json."""
from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from typing import Any

from .loadgen import RunResult
from .lookup import LookupResults

PERCENTILES = (50, 90, 99, 99.9)
#: Answers that are the server's failure rather than the name's (NXDOMAIN is an answer).
ERROR_RCODES = ("SERVFAIL", "REFUSED", "FORMERR", "NOTIMP")


def quantile_ms(values_s: Sequence[float], p: float) -> float:
    """The *p*-th percentile in ms, interpolated between samples (as numpy's default)."""
    if not values_s:
        return math.nan
    if len(values_s) == 1:
        return values_s[0] * 1000
    cuts = statistics.quantiles(values_s, n=1000, method="inclusive")
    k = round(p * 10) - 1
    return (min(values_s) if k < 0 else cuts[k] if k < len(cuts) else max(values_s)) * 1000


def latency_ms(values_s: Sequence[float]) -> dict[str, float]:
    out = {f"p{p:g}": quantile_ms(values_s, p) for p in PERCENTILES}
    out["mean"] = statistics.fmean(values_s) * 1000 if values_s else math.nan
    out["n"] = len(values_s)
    return out


def run_summary(r: RunResult, seconds: float | None = None) -> dict[str, Any]:
    """Counts, rates and latency of one load generator run."""
    errors = sum(r.rcodes.get(c, 0) for c in ERROR_RCODES)
    span = seconds if seconds is not None else r.send_span
    counted = r.sent - r.abandoned
    return {
        "offered_qps": r.rate,
        "sent": r.sent,
        "sent_qps": (r.sent - 1) / r.send_span if r.send_span > 0 else math.nan,
        "answered": r.answered,
        "answered_qps": r.answered / span if span and span > 0 else math.nan,
        "timeouts": r.timeouts,
        "timeout_rate": r.timeouts / counted if counted else math.nan,
        "errors": errors,
        "error_rate": errors / counted if counted else math.nan,
        "abandoned": r.abandoned,
        "client_drops": r.client_drops,
        "truncated": r.truncated,
        "rcodes": dict(sorted(r.rcodes.items())),
        "latency_ms": latency_ms(r.latencies),
        "send_lag_ms": {"p50": quantile_ms(r.send_lags, 50), "p99": quantile_ms(r.send_lags, 99),
                        "max": max(r.send_lags) * 1000 if r.send_lags else math.nan},
    }


def lookup_summary(r: LookupResults) -> dict[str, Any]:
    return {
        "lookups": r.lookups, "found": r.found, "not_found": r.not_found, "timeouts": r.timeouts,
        "queries": r.queries, "queries_per_lookup": r.queries / r.lookups if r.lookups else math.nan,
        "lookup_ms": latency_ms(r.times),
    }
