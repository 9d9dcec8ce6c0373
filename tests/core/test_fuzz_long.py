"""The long fuzz run: the checks of ``test_fuzz_wire`` for 100,000+ cases.

Outside the default set (``slow``). Run it with::

    pytest tests/core/test_fuzz_long.py -m slow -q

``FUZZ_CASES`` and ``FUZZ_SEED`` in the environment change the mutation count
and the seed.
"""
from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.kit import fuzzkit as fuzz

CASES = int(os.environ.get("FUZZ_CASES", "100000"))
SEED = int(os.environ.get("FUZZ_SEED", "20240601"))

LONG = settings(max_examples=10000, deadline=None, database=None,
                suppress_health_check=list(HealthCheck))


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_mutations_long() -> None:
    assert fuzz.run_mutations(CASES, SEED) == CASES


@pytest.mark.slow
@pytest.mark.timeout(3600)
@LONG
@given(data=st.one_of(st.binary(max_size=600), fuzz.messages, fuzz.plain_queries),
       slot=st.integers(0, 3), upstream=st.one_of(st.none(), st.binary(max_size=300),
                                                  fuzz.messages))
def test_generated_long(data: bytes, slot: int, upstream: bytes | None) -> None:
    fuzz.exercise(data, slot=slot, upstream=upstream)
