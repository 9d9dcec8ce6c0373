"""The miss floor (bench/nodebench/missfloor.py) on loopback in front of a real knotd: every
query is forwarded over its one TCP connection and answered with the client's own ID, also when
two clients use the same IDs at once; what is not a query is dropped and changes nothing."""
from __future__ import annotations

import random
import select
import socket
import sys
import tempfile
import time
from pathlib import Path

import dns.message
import dns.rcode
import dns.rdatatype
import pytest

from tests.kit import ROOT

sys.path.insert(0, str(ROOT / "bench"))

from nodebench.host import Cleanup, start_daemon  # noqa: E402
from nodebench.missrate import PROBE_NAME, start_knot, wait_answer  # noqa: E402
from nodebench.servers import _env, python  # noqa: E402

#: Apart from bench/run --missrate's addresses, so a benchmark running meanwhile does not clash.
KNOT = ("127.0.0.40", 5310)
FLOOR = ("127.0.0.41", 5311)
CLIENTS, QUERIES = 3, 200  # queries per client, all sent before any answer is read


@pytest.mark.timeout(90)
def test_miss_floor_answers_every_query_with_the_clients_id() -> None:
    cleanup = Cleanup()
    socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(CLIENTS)]
    with tempfile.TemporaryDirectory(prefix="ncb-missfloor-") as tmp:
        try:
            start_knot(cleanup, Path(tmp), KNOT)
            floor = start_daemon(cleanup, "miss-floor", [
                python(), "-m", "nodebench.missfloor", "--listen", FLOOR[0], "--port", str(FLOOR[1]),
                "--upstream", KNOT[0], "--upstream-port", str(KNOT[1]), "--max-seconds", "120"],
                ns=None, log_dir=Path(tmp), env=_env())
            wait_answer(floor, *FLOOR)
            ids = random.Random(11).sample(range(65536), QUERIES)  # every client uses the same IDs
            sent: dict[tuple[int, int], str] = {}
            for n, sock in enumerate(socks):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
                sock.sendto(b"\x00\x01short", FLOOR)  # under a header: dropped
                answer = dns.message.make_response(dns.message.make_query(PROBE_NAME, "A"))
                sock.sendto(answer.to_wire(), FLOOR)  # QR set: not a query, dropped
                for i, qid in enumerate(ids):
                    name = f"c{n}q{i}.ns.svc.cluster.local."
                    query = dns.message.make_query(name, "A")
                    query.id = qid
                    sock.sendto(query.to_wire(), FLOOR)
                    sent[n, qid] = name
            got: dict[tuple[int, int], str] = {}
            deadline = time.monotonic() + 20
            while len(got) < len(sent) and time.monotonic() < deadline:
                ready, _, _ = select.select(socks, [], [], 1.0)
                for sock in ready:
                    msg = dns.message.from_wire(sock.recv(4096))
                    n = socks.index(sock)
                    assert (n, msg.id) in sent and (n, msg.id) not in got, (n, msg.id)
                    assert msg.rcode() == dns.rcode.NOERROR and msg.flags & 0x8000, msg
                    [rrset] = msg.answer
                    assert rrset.rdtype == dns.rdatatype.A and [r.address for r in rrset] == ["10.0.0.1"], msg
                    got[n, msg.id] = msg.question[0].name.to_text()
            assert got == sent, f"{len(sent) - len(got)} of {len(sent)} queries unanswered or wrong"
            assert floor.alive()
        finally:
            for sock in socks:
                sock.close()
            cleanup.run()
