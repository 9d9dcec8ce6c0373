"""The ``errors`` plugin's ``consolidate`` rules, sans I/O: count now, log one line later.

Rules of this module (CoreDNS's errors plugin):

1. An error is matched against the rules in order (a regular-expression
   search, unanchored unless the pattern says ``^``/``$``); the first rule that
   matches counts it, and it is not logged on its own.
2. The first error a rule counts starts its period; when the period is over,
   one line says how many there were, at the rule's level, and the count
   starts again from zero (the next match starts a new period).
3. At shutdown whatever is counted is logged at once (:meth:`flush`).

Drive it like the other core objects: ``record(text, now)``, then arm a timer
for :meth:`get_timer` and call :meth:`handle_timer` when it fires.
"""
from __future__ import annotations

import re
from collections.abc import Sequence

from nodecache.config.settings import ConsolidateRule

#: CoreDNS's level names, as they prefix a log line.
LEVEL_TAGS = {"error": "ERROR", "warning": "WARNING", "info": "INFO", "debug": "DEBUG"}


def go_duration(seconds: float) -> str:
    """A duration as Go's time.Duration prints it: ``30s``, ``5m0s``, ``1h30m0s``, ``500ms``."""
    if seconds == 0:
        return "0s"
    if seconds < 1:
        ms = seconds * 1000
        return f"{ms:g}ms" if ms >= 1 else f"{seconds * 1e6:g}µs"
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    text = f"{secs:g}s"
    if hours or minutes:
        text = f"{int(minutes)}m" + text
    if hours:
        text = f"{int(hours)}h" + text
    return text


class ErrorConsolidator:
    """Counts the errors one block's ``consolidate`` rules match."""

    def __init__(self, rules: Sequence[ConsolidateRule]) -> None:
        self.rules = tuple(rules)
        self._patterns = [re.compile(rule.pattern) for rule in self.rules]
        self._counts = [0] * len(self.rules)
        #: When each rule's period ends (loop time, s); None while it counts nothing.
        self._due: list[float | None] = [None] * len(self.rules)

    def record(self, text: str, now: float) -> bool:
        """Count ``text`` under the first rule it matches; False when it must be logged itself."""
        for i, pattern in enumerate(self._patterns):
            if pattern.search(text):
                self._counts[i] += 1
                if self._due[i] is None:
                    self._due[i] = now + self.rules[i].period
                return True
        return False

    def get_timer(self) -> float | None:
        """When :meth:`handle_timer` is next due, or None."""
        due = [d for d in self._due if d is not None]
        return min(due) if due else None

    def handle_timer(self, now: float) -> list[tuple[str, str]]:
        """(level, line) for every rule whose period is over."""
        return self._lines([i for i, d in enumerate(self._due) if d is not None and d <= now])

    def flush(self) -> list[tuple[str, str]]:
        """(level, line) for everything counted so far (at shutdown or reload)."""
        return self._lines([i for i, d in enumerate(self._due) if d is not None])

    def _lines(self, which: list[int]) -> list[tuple[str, str]]:
        out = []
        for i in which:
            rule, count = self.rules[i], self._counts[i]
            self._counts[i], self._due[i] = 0, None
            out.append((rule.level, f"[{LEVEL_TAGS[rule.level]}] plugin/errors: {count} errors"
                                    f" like '{rule.pattern}' occurred in last"
                                    f" {go_duration(rule.period)}"))
        return out
