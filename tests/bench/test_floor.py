"""The Python floor (bench/nodebench/floor.py) in each of its ways of reading the socket, in
front of a real knotd: a first query is relayed upstream, and every later one, sent in bursts
from several clients with the same IDs, is answered from its dict (knotd gone) with the
client's own ID."""
from __future__ import annotations

import select
import socket
import sys
import tempfile
import time
from pathlib import Path

import dns.message
import dns.rdatatype
import pytest

from tests.kit import ROOT

sys.path.insert(0, str(ROOT / "bench"))

from nodebench.floor import IO_MODES  # noqa: E402
from nodebench.host import Cleanup, start_daemon  # noqa: E402
from nodebench.missrate import start_knot, wait_answer  # noqa: E402
from nodebench.servers import _env, python  # noqa: E402

#: Apart from the benchmarks' and test_missfloor's addresses.
KNOT = ("127.0.0.42", 5312)
FLOOR = ("127.0.0.43", 5313)
CLIENTS, NAMES, ROUNDS = 3, 20, 5


def _collect(socks: list[socket.socket], expected: int) -> dict[tuple[int, int], dns.message.Message]:
    got: dict[tuple[int, int], dns.message.Message] = {}
    deadline = time.monotonic() + 20
    while len(got) < expected and time.monotonic() < deadline:
        ready, _, _ = select.select(socks, [], [], 1.0)
        for sock in ready:
            msg = dns.message.from_wire(sock.recv(4096))
            key = (socks.index(sock), msg.id)
            assert key not in got, f"answered twice: {key}"
            got[key] = msg
    return got


@pytest.mark.timeout(60)
@pytest.mark.parametrize("io", IO_MODES)
def test_floor_answers_with_each_clients_id(io: str) -> None:
    cleanup = Cleanup()
    socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(CLIENTS)]
    names = [f"n{i}.ns.svc.cluster.local." for i in range(NAMES)]
    with tempfile.TemporaryDirectory(prefix="ncb-floor-") as tmp:
        try:
            knot = start_knot(cleanup, Path(tmp), KNOT)
            floor = start_daemon(cleanup, "floor", [
                python(), "-m", "nodebench.floor", "--listen", FLOOR[0], "--port", str(FLOOR[1]),
                "--upstream", KNOT[0], "--upstream-port", str(KNOT[1]), "--io", io, "--max-seconds", "60"],
                ns=None, log_dir=Path(tmp), env=_env())
            wait_answer(floor, *FLOOR)
            for rnd in range(ROUNDS):  # round 0 fills the dict through knotd; the rest are hits
                sent: dict[tuple[int, int], str] = {}
                for n, sock in enumerate(socks):
                    for i, name in enumerate(names):
                        query = dns.message.make_query(name, "A")
                        query.id = rnd * NAMES + i  # the same IDs from every client
                        sock.sendto(query.to_wire(), FLOOR)
                        sent[n, query.id] = name
                got = _collect(socks, len(sent))
                assert set(got) == set(sent), f"{io} round {rnd}: {len(sent) - len(got)} unanswered"
                for key, msg in got.items():
                    assert msg.question[0].name.to_text() == sent[key], (io, key, msg)
                    [rrset] = msg.answer
                    assert rrset.rdtype == dns.rdatatype.A and [r.address for r in rrset] == ["10.0.0.1"], msg
                if rnd == 0:
                    knot.stop()  # from now on only the floor's dict can answer
            assert floor.alive()
        finally:
            for sock in socks:
                sock.close()
            cleanup.run()
