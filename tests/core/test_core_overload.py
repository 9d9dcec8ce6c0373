"""The overload rule: a lasting receive-queue backlog is overload, one full sample is not."""
from __future__ import annotations

import pytest

from nodecache.core.overload import OverloadDetector

F, E = 0.5, 0.01  # a full sample (half the buffer) and an almost empty one
STEP = 0.02  # s between samples, as the agent takes them

# (what it looks like, fill samples taken STEP apart, overloaded after each sample)
CASES = [
    ("idle", [0, 0, 0, 0], "...."),
    ("a scheduling pause: one full sample, drained by the next",
     [E, F, E, E, F, E, E], "......."),
    ("two pauses back to back are still no backlog", [F, F, E, F, F, E], "......"),
    ("a flood: the queue stays full", [F, F, F, F], "..##"),
    ("at the threshold is not above it", [0.125, 0.125, 0.125, 0.125], "...."),
    ("just above it", [0.13, 0.13, 0.13], "..#"),
    # hold 0.5 s = 25 samples: calm samples within it keep shedding on
    ("a flood in bursts stays overloaded within the hold",
     [F, F, F] + [E] * 10 + [F] + [E] * 10, "..#" + "#" * 10 + "#" + "#" * 10),
    ("overload ends a hold after the last full sample",
     [F, F, F] + [E] * 26, "..#" + "#" * 24 + ".."),
    ("after it ends, one full sample does not bring it back",
     [F, F, F] + [E] * 26 + [F, E], "..#" + "#" * 24 + ".." + ".."),
]


@pytest.mark.parametrize("fills, expected", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_overload_rule(fills: list[float], expected: str) -> None:
    detector = OverloadDetector()
    states = ""
    for i, fill in enumerate(fills):
        detector.sample(i * STEP, fill)
        states += "#" if detector.overloaded else "."
    assert states == expected


def test_samples_are_counted_not_timed() -> None:
    """A starved process samples late: three full samples in a row are overload however
    far apart they come; one full sample after a long pause is not."""
    detector = OverloadDetector()
    assert not detector.sample(0.0, F)
    assert not detector.sample(0.4, E)
    assert not detector.sample(5.0, F)
    assert not detector.overloaded
    assert not detector.sample(5.3, F)
    assert detector.sample(5.9, F)  # the third in a row: changed
    assert detector.overloaded


def test_sample_reports_changes_only() -> None:
    detector = OverloadDetector(sustain=1, hold=0.1)
    changes = [detector.sample(t, f) for t, f in ((0.0, F), (0.05, F), (0.1, E), (0.2, E), (0.3, E))]
    assert changes == [True, False, False, True, False]


def test_samples_come_faster_while_a_backlog_builds_or_overload_lasts() -> None:
    detector = OverloadDetector()
    calm, fast = detector.calm_interval, detector.interval
    assert fast < calm
    due = []
    for i, fill in enumerate([E, F, E, F, F, F] + [E] * 26):
        detector.sample(i * STEP, fill)
        due.append(detector.next_sample())
    # calm; a full sample asks for a quick look; calm again; a backlog and overload
    # (held 0.5 s after the last full sample) keep the quick pace; then calm
    assert due == [calm, fast, calm, fast, fast, fast] + [fast] * 24 + [calm] * 2


def test_sampling_waits_for_traffic_after_a_second_of_empty_queues() -> None:
    """Rule 5: ``quiet`` empty samples in a row and the agent waits for a datagram; a
    queued byte in between, a backlog or overload lasting keep it sampling."""
    detector = OverloadDetector()
    parks = []
    for i, fill in enumerate([0.0] * 9 + [E] + [0.0] * 10):
        detector.sample(i * STEP, fill)
        parks.append(detector.parks())
    assert parks == [False] * 19 + [True]
    # The wait ended without a datagram: one more empty sample and it waits again.
    detector.sample(1.0, 0.0)
    assert detector.parks()
    # A datagram ended it: a second of samples again before the next wait.
    detector.datagram_came()
    for i in range(detector.quiet - 1):
        detector.sample(2.0 + i * STEP, 0.0)
        assert not detector.parks()
    detector.sample(3.0, 0.0)
    assert detector.parks()


def test_overload_keeps_sampling_even_with_empty_queues() -> None:
    detector = OverloadDetector()
    for i in range(3):
        detector.sample(i * STEP, F)
    assert detector.overloaded
    for i in range(3, 3 + detector.quiet + 5):  # empty, still within the hold (0.5 s)
        detector.sample(i * STEP, 0.0)
        assert detector.overloaded and not detector.parks()
    detector.sample(10.0, 0.0)  # the hold is over
    assert not detector.overloaded and detector.parks()
