"""Hostile input against the sans-I/O core: nothing raises, every reply is sound.

Three entry points take bytes from strangers: ``QueryHandler.handle`` (client
queries, hit path and slow path), ``wire.parse_query`` and ``wire.index_response``
plus ``QueryHandler.absorb``/``reply`` (upstream answers). The properties:

* ``handle`` never raises; it returns ``None``, a :class:`Miss`, or bytes;
* bytes are a DNS message dnspython can parse, carrying the query's ID, with QR set;
* ``parse_query`` raises only ``ClientProtocolError``; ``index_response`` only ``ValueError``;
* an upstream answer, however broken, becomes a parseable reply for the client.

Inputs are hypothesis-generated messages plus byte-level mutations of valid
queries (bit flips, truncation, splices, count fields), which reach the
branches random bytes almost never do. The default run is a few thousand
cases; ``test_fuzz_long.py`` (marked ``slow``) runs the same checks for 100,000+.
"""
from __future__ import annotations

import dns.message
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.kit.fuzzkit import (NAMES, NOW, SEEDS, exercise, make_handler, messages, plain_queries,
                               run_mutations)

FUZZ = settings(max_examples=800, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])


@FUZZ
@given(data=st.one_of(st.binary(max_size=600), messages), slot=st.integers(0, 3))
def test_handle_never_raises_and_replies_are_sound(data: bytes, slot: int) -> None:
    exercise(data, slot=slot)


@FUZZ
@given(query=plain_queries, slot=st.integers(0, 3))
def test_hit_path_agrees_with_its_contract(query: bytes, slot: int) -> None:
    exercise(query, slot=slot)


@FUZZ
@given(query=st.sampled_from(SEEDS), upstream=st.one_of(st.binary(max_size=300), messages))
def test_any_upstream_answer_becomes_a_sound_reply(query: bytes, upstream: bytes) -> None:
    exercise(query, upstream=upstream)


@pytest.mark.parametrize("seed", range(4))
def test_mutated_valid_packets(seed: int) -> None:
    assert run_mutations(2000, seed) == 2000


def test_seeds_hit_the_cache() -> None:
    """The fuzz corpus reaches the hit path (otherwise it would test little)."""
    query = dns.message.make_query(NAMES[0], "A", use_edns=0)
    reply = make_handler().handle(query.to_wire(), NOW + 1, 0)
    assert isinstance(reply, bytes)
    assert dns.message.from_wire(reply).answer
