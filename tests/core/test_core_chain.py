"""The chain inside the per-query decision: what is cached, forwarded, rewritten, synthesized."""
from __future__ import annotations

import dns.message
import dns.rcode
import dns.rrset

from nodecache.core.stages.hosts import HostsStage
from tests.kit.coredriver import Driver
from tests.kit.queries import make_query


def upstream(query: dns.message.Message) -> dns.message.Message:
    """A zone: A records for every name but 'v6.', AAAA for 'v6.' names, NODATA otherwise."""
    reply = dns.message.make_response(query)
    question = query.question[0]
    name = question.name.to_text()
    if question.rdtype == 1 and not name.startswith("v6."):
        reply.answer.append(dns.rrset.from_text(name, 300, "IN", "A", "192.0.2.1"))
    elif question.rdtype == 28 and name.startswith("v6."):
        reply.answer.append(dns.rrset.from_text(name, 300, "IN", "AAAA", "2001:db8::1"))
    else:
        reply.authority.append(dns.rrset.from_text("example.", 30, "IN", "SOA",
                                                   "ns. host. 1 2 3 4 60"))
    return reply


def driver(plugins: str) -> Driver:
    return Driver(".:53 {\n  cache 30\n" + plugins + "\n  forward . 127.0.0.1\n}\n", upstream)


def answers(message: dns.message.Message | None) -> list[str]:
    assert message is not None
    return sorted(r.to_text() for r in message.answer)


def test_local_answers_are_cached_under_the_clients_name() -> None:
    d = driver("  hosts {\n    10.0.0.1 a.example.\n    fallthrough\n  }")
    first = d.ask(make_query("A.Example.", "A"))
    # (the owner name is compressed against the question, so it shows the client's case)
    assert [a.lower() for a in answers(first)] == ["a.example. 30 in a 10.0.0.1"]
    assert first is not None and first.question[0].name.to_text() == "A.Example."
    assert not d.upstream_queries
    assert any(key.startswith(b"\x01a\x07example\x00") for key in d.handler.index)
    d.now += 5
    assert answers(d.ask(make_query("a.example.", "A"))) == ["a.example. 25 IN A 10.0.0.1"]  # a hit
    assert answers(d.ask(make_query("b.example.", "A"))) == ["b.example. 30 IN A 192.0.2.1"]
    assert [m.question[0].name.to_text() for m in d.upstream_queries] == ["b.example."]


def test_unwritten_failures_are_not_cached() -> None:
    d = driver("  template IN A example. {\n    match ^x[.]\n  }")
    for _ in range(2):
        reply = d.ask(make_query("y.example.", "A"))
        assert reply is not None and reply.rcode() == dns.rcode.SERVFAIL
    assert not d.handler.index and not d.upstream_queries


def test_rewritten_question_goes_upstream_and_comes_back() -> None:
    d = driver("  rewrite name suffix .corp. .example. answer auto")
    reply = d.ask(make_query("www.corp.", "A"))
    assert [m.question[0].name.to_text() for m in d.upstream_queries] == ["www.example."]
    assert reply is not None and reply.question[0].name.to_text() == "www.corp."
    assert answers(reply) == ["www.corp. 30 IN A 192.0.2.1"]
    assert answers(d.ask(make_query("www.corp.", "A"))) == ["www.corp. 30 IN A 192.0.2.1"]
    assert len(d.upstream_queries) == 1  # the second answer was a hit under the client's name


def test_hosts_file_reload_is_seen_on_the_next_miss() -> None:
    d = driver("  hosts /nonexistent {\n    fallthrough\n  }")
    zone = next(iter(d.handler.zones.values()))
    assert zone.chain is not None
    stage = zone.chain.stages[0]
    assert isinstance(stage, HostsStage)
    assert answers(d.ask(make_query("h.example.", "A"))) == ["h.example. 30 IN A 192.0.2.1"]
    stage.load("10.0.0.7 g.example.\n")
    assert answers(d.ask(make_query("g.example.", "A"))) == ["g.example. 30 IN A 10.0.0.7"]


def test_dns64_for_ipv6_clients_only_and_after_a_hit() -> None:
    d = driver("  dns64")
    for _ in range(2):  # the second round comes from the cache
        six = d.ask(make_query("www.example.", "AAAA"), ipv6=True)
        assert answers(six) == ["www.example. 30 IN AAAA 64:ff9b::c000:201"]
        four = d.ask(make_query("www.example.", "AAAA"))
        assert four is not None and not four.answer and four.rcode() == 0
        native = d.ask(make_query("v6.example.", "AAAA"), ipv6=True)
        assert answers(native) == ["v6.example. 30 IN AAAA 2001:db8::1"]
    assert len(d.upstream_queries) == 3  # www AAAA, www A, v6 AAAA: once each
    # dns64's AAAA entries stay off the hit path; everything else is on it.
    assert all(key[-4:-2] != b"\x00\x1c" for key in d.handler.index)
    assert len(d.handler.aside) == 2


def test_dns64_allow_ipv4_and_nxdomain() -> None:
    d = Driver(".:53 {\n  dns64 {\n    allow_ipv4\n    prefix 2001:db8::/32\n  }\n"
               "  template IN ANY nx.example. {\n    rcode NXDOMAIN\n  }\n"
               "  forward . 127.0.0.1\n}\n", upstream)
    assert answers(d.ask(make_query("www.example.", "AAAA"))) == ["www.example. 30 IN AAAA 2001:db8:c000:201::"]
    # (TTL: the AAAA answer's SOA TTL, 30 s, bounds the A record's 300 s)
    nx = d.ask(make_query("a.nx.example.", "AAAA"))
    assert nx is not None and nx.rcode() == dns.rcode.NXDOMAIN and not nx.answer


def test_whoami_sees_the_client() -> None:
    d = Driver(".:53 {\n  whoami\n}\n", upstream)
    reply = d.ask(make_query("who.example.", "A"), addr=("192.0.2.9", 4242))
    assert reply is not None and reply.rcode() == 0
    assert sorted(r.to_text() for r in reply.additional) == [
        "_udp.who.example. 0 IN SRV 0 0 4242 .", "who.example. 0 IN A 192.0.2.9"]


def test_plugin_label_of_responses() -> None:
    d = Driver(".:53 {\n  template IN AAAA . {\n    rcode NOERROR\n  }\n  forward . 127.0.0.1\n}\n",
               upstream)
    d.ask(make_query("www.example.", "AAAA"))
    d.ask(make_query("www.example.", "A"))
    stats = next(iter(d.handler.zones.values())).stats
    assert stats.responses[("NOERROR", "template")] == 1
    assert stats.responses[("NOERROR", "forward")] == 1


def test_background_refresh_goes_upstream_rewritten() -> None:
    d = Driver(".:53 {\n  cache 30 {\n    prefetch 1 1m 50%\n  }\n"
               "  rewrite name suffix .corp. .example. answer auto\n  forward . 127.0.0.1\n}\n",
               upstream)
    assert answers(d.ask(make_query("www.corp.", "A"))) == ["www.corp. 30 IN A 192.0.2.1"]
    d.now += 20  # past half the TTL: the next hit prefetches
    d.ask(make_query("www.corp.", "A"))
    assert len(d.refreshes) == 1
    refresh = d.refreshes[0]
    query = dns.message.from_wire(d.handler.upstream_query(refresh))
    assert query.question[0].name.to_text() == "www.example."
    reply = dns.message.make_response(query)
    reply.answer.append(dns.rrset.from_text("www.example.", 300, "IN", "A", "192.0.2.2"))
    d.handler.absorb(refresh, reply.to_wire(), d.now)
    assert answers(d.ask(make_query("www.corp.", "A"))) == ["www.corp. 30 IN A 192.0.2.2"]


def test_background_refresh_of_a_local_answer_stays_local() -> None:
    d = Driver(".:53 {\n  cache 30 {\n    prefetch 1 1m 50%\n  }\n"
               "  hosts /nonexistent\n  forward . 127.0.0.1\n}\n", upstream)
    chain = next(iter(d.handler.zones.values())).chain
    assert chain is not None
    stage = chain.stages[0]
    assert isinstance(stage, HostsStage)
    stage.load("10.0.0.1 a.example.\n")
    d.ask(make_query("a.example.", "A"))
    stage.load("10.0.0.2 a.example.\n")
    d.now += 20
    d.ask(make_query("a.example.", "A"))  # prefetch: hosts answers it at once, nothing goes upstream
    assert not d.refreshes and not d.upstream_queries
    assert answers(d.ask(make_query("a.example.", "A"))) == ["a.example. 30 IN A 10.0.0.2"]


def test_template_cname_targets_are_looked_up_and_cached_with_the_answer() -> None:
    d = driver("  template IN A corp. {\n    answer \"{{ .Name }} 60 IN CNAME www.example.\"\n  }\n"
               "  template IN A loop. {\n    answer \"{{ .Name }} 60 IN CNAME again.loop.\"\n  }")
    reply = d.ask(make_query("app.corp.", "A"))
    assert answers(reply) == ["app.corp. 30 IN CNAME www.example.", "www.example. 30 IN A 192.0.2.1"]
    assert [m.question[0].name.to_text() for m in d.upstream_queries] == ["www.example."]
    assert answers(d.ask(make_query("app.corp.", "A"))) == answers(reply)  # one cached answer
    assert len(d.upstream_queries) == 1
    # A CNAME to itself: bounded, and still an answer.
    looped = d.ask(make_query("x.loop.", "A"))
    assert looped is not None and looped.rcode() == 0
    assert "x.loop. 30 IN CNAME again.loop." in answers(looped)


def test_template_cname_target_records_are_mapped_back_by_rewrite() -> None:
    d = driver("  rewrite name suffix .corp. .example. answer auto\n"
               "  template IN A app.example. {\n    answer \"{{ .Name }} 60 IN CNAME www.example.\"\n  }")
    assert answers(d.ask(make_query("app.corp.", "A"))) == ["app.corp. 30 IN CNAME www.corp.",
                                                   "www.corp. 30 IN A 192.0.2.1"]
