"""The errors plugin's consolidate rules without a loop: a fake clock, lines out."""
from __future__ import annotations

import pytest

from nodecache.config.settings import ConsolidateRule
from nodecache.core.errorlog import ErrorConsolidator, go_duration

TIMEOUT = ConsolidateRule(30.0, r".* i/o timeout$", "warning")
FAILED = ConsolidateRule(300.0, r"^Failed to .+")
ANY_TIMEOUT = ConsolidateRule(5.0, "timeout", "info")


@pytest.mark.parametrize("seconds,text", [
    (0, "0s"), (0.5, "500ms"), (1, "1s"), (1.5, "1.5s"), (30, "30s"), (90, "1m30s"),
    (300, "5m0s"), (3600, "1h0m0s"), (5400, "1h30m0s"),
])
def test_durations_print_as_go_does(seconds: float, text: str) -> None:
    assert go_duration(seconds) == text


# (rules, error text, counted by a rule rather than logged on its own)
MATCH_CASES = [
    ((TIMEOUT,), "read udp 10.0.0.1:5353->10.96.0.10:53: i/o timeout", True),
    ((TIMEOUT,), "read udp 10.0.0.1:5353->10.96.0.10:53: i/o timeout (again)", False),  # $
    ((FAILED,), "Failed to connect", True),
    ((FAILED,), "we Failed to connect", False),  # ^
    ((ANY_TIMEOUT,), "timeout: 10.96.0.10:53: no answer within 2.0s", True),  # unanchored
    ((), "anything", False),
]


@pytest.mark.parametrize("rules,text,counted", MATCH_CASES)
def test_which_errors_are_counted(rules: tuple[ConsolidateRule, ...], text: str,
                                  counted: bool) -> None:
    assert ErrorConsolidator(rules).record(text, 0.0) is counted


def test_one_line_per_period_from_the_first_error() -> None:
    log = ErrorConsolidator([TIMEOUT])
    assert log.get_timer() is None
    for at in (10.0, 12.0, 39.0):
        assert log.record("dial: i/o timeout", at)
    assert log.get_timer() == 40.0  # 30 s after the first
    assert log.handle_timer(39.9) == []
    assert log.handle_timer(40.0) == [
        ("warning", "[WARNING] plugin/errors: 3 errors like '.* i/o timeout$' occurred in last 30s")]
    assert log.get_timer() is None
    # The next error starts a new period, counted from zero.
    assert log.record("dial: i/o timeout", 50.0)
    assert log.get_timer() == 80.0
    assert log.handle_timer(80.0)[0][1].startswith("[WARNING] plugin/errors: 1 errors like")


def test_first_matching_rule_counts_and_levels_are_kept() -> None:
    log = ErrorConsolidator([ANY_TIMEOUT, TIMEOUT, FAILED])
    log.record("x: i/o timeout", 0.0)  # matches the first two: the first counts it
    log.record("Failed to dial", 1.0)
    assert log.get_timer() == 5.0
    assert log.handle_timer(5.0) == [
        ("info", "[INFO] plugin/errors: 1 errors like 'timeout' occurred in last 5s")]
    assert log.get_timer() == 301.0
    assert log.flush() == [
        ("error", "[ERROR] plugin/errors: 1 errors like '^Failed to .+' occurred in last 5m0s")]
    assert log.flush() == [] and log.get_timer() is None
