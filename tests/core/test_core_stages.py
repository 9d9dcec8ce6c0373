"""The answering stages alone (hosts, template, rewrite, dns64, whoami): tables of cases, no I/O."""
from __future__ import annotations

import ipaddress

import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset
import pytest

from nodecache.config import parse_text
from nodecache.core.chain import Answer, Chain, Failure, Request, Rewritten, Step
from nodecache.core.stages import chain_for
from nodecache.core.stages.dns64 import DNS64, DNS64Settings, embed
from nodecache.core.stages.hosts import HostsSettings, HostsStage, parse_hosts, reverse_address
from nodecache.core.stages.rewrite import RewriteStage
from nodecache.core.stages.template import Template, TemplateStage, compile_text, parse_record
from nodecache.core.stages.whoami import WhoamiStage
from nodecache.core import wire

A, AAAA, PTR, MX, TXT, ANY = 1, 28, 12, 15, 16, 255


def req(name: str, qtype: int = A, **kw: object) -> Request:
    return Request(name.lower(), qtype, 1, name, **kw)  # type: ignore[arg-type]


def records(step: Step) -> list[str]:
    """The answer section of an Answer as sorted 'name type rdata' lines."""
    assert isinstance(step, Answer)
    return sorted(f"{rr.name} {dns.rdatatype.to_text(rr.rdtype)} {r}"
                  for rr in step.message.answer for r in rr)


def block(corefile: str):  # type: ignore[no-untyped-def]
    return parse_text(corefile, default_port=53).blocks[0]


# -- hosts ------------------------------------------------------------------

HOSTS = HostsSettings(zones=("example.org.",), inline=("10.0.0.9 inline.example.org",),
                      ttl=60, fallthrough=("fall.example.org.",))
HOSTS_TEXT = "10.0.0.1 a.example.org A2.example.org\nfd00::1 a.example.org\n10.0.0.2 b.example.com\n"


@pytest.mark.parametrize("question, expected", [
    (req("a.example.org."), ["a.example.org. A 10.0.0.1"]),
    (req("A2.Example.ORG."), ["a2.example.org. A 10.0.0.1"]),
    (req("a.example.org.", AAAA), ["a.example.org. AAAA fd00::1"]),
    (req("inline.example.org."), ["inline.example.org. A 10.0.0.9"]),
    (req("inline.example.org.", AAAA), []),   # a name it has, a type it has not: NODATA
    (req("a.example.org.", MX), []),
    (req("none.example.org."), Failure(2)),    # unknown, no fallthrough: SERVFAIL
    (req("x.fall.example.org."), None),        # unknown, fallthrough covers it
    (req("b.example.com."), None),             # outside the zones (the entry was dropped)
    (req("1.0.0.10.in-addr.arpa.", PTR), ["1.0.0.10.in-addr.arpa. PTR a.example.org.",
                                          "1.0.0.10.in-addr.arpa. PTR a2.example.org."]),
    (req("1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.d.f.ip6.arpa.", PTR),
     ["1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.d.f.ip6.arpa. PTR a.example.org."]),
    (req("7.7.7.7.in-addr.arpa.", PTR), None),  # unknown address: always handed on
])
def test_hosts(question: Request, expected: list[str] | Failure | None) -> None:
    stage = HostsStage(HOSTS)
    stage.load(HOSTS_TEXT)
    step = stage.serve(question)
    if isinstance(expected, list):
        assert records(step) == expected
        assert isinstance(step, Answer) and step.message.flags & dns.flags.AA
        assert all(rr.ttl == 60 for rr in step.message.answer)
    else:
        assert step == expected


def test_hosts_reload_replaces_file_entries_and_keeps_inline() -> None:
    stage = HostsStage(HOSTS)
    stage.load(HOSTS_TEXT)
    stage.load("10.0.0.3 a.example.org\n")
    assert records(stage.serve(req("a.example.org."))) == ["a.example.org. A 10.0.0.3"]
    assert records(stage.serve(req("inline.example.org."))) == ["inline.example.org. A 10.0.0.9"]
    assert stage.entries == 4  # a -> 10.0.0.3 and its PTR, inline and its PTR


@pytest.mark.parametrize("text, names4, names6", [
    ("# comment only\n", {}, {}),
    ("10.0.0.1\n", {}, {}),                                   # no name
    ("not-an-ip host.example.org\n", {}, {}),
    ("010.0.0.1 host.example.org\n", {}, {}),                 # leading zeros: Go refuses too
    ("::ffff:10.0.0.4 m.example.org\n", {"m.example.org.": ["10.0.0.4"]}, {}),
    ("fe80::1%eth0 z.example.org\n", {}, {"z.example.org.": ["fe80::1"]}),
    ("10.0.0.1 h.example.org # c\n10.0.0.1 h.example.org\n",
     {"h.example.org.": ["10.0.0.1", "10.0.0.1"]}, {}),
])
def test_hosts_file_lines(text: str, names4: dict[str, list[str]],
                          names6: dict[str, list[str]]) -> None:
    hosts = parse_hosts(text, (".",), True)
    assert hosts.name4 == names4 and hosts.name6 == names6


@pytest.mark.parametrize("name, address", [
    ("4.3.2.1.in-addr.arpa.", "1.2.3.4"),
    ("3.2.1.in-addr.arpa.", None),
    ("x.3.2.1.in-addr.arpa.", None),
    ("1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6.arpa.", "2001:db8::1"),
    ("1.0.ip6.arpa.", None),
    ("www.example.org.", None),
])
def test_reverse_address(name: str, address: str | None) -> None:
    assert reverse_address(name) == address


# -- template ---------------------------------------------------------------

@pytest.mark.parametrize("text, data, expected", [
    ("{{ .Name }} 60 IN A 1.2.3.4", {}, "ip-1.example.org. 60 IN A 1.2.3.4"),
    ("{{.Zone}}|{{ .Class }}|{{ .Type }}|{{ .Remote }}", {}, "example.org.|IN|A|192.0.2.1"),
    ("{{ .Group.a }}-{{ index .Match 1 }}-{{ index .Group \"a\" }}", {}, "1-1-1"),
    ("x {{- .Zone -}} y", {}, "xexample.org.y"),
    ("{{ parseInt .Group.h 16 8 }}.{{ parseInt (index .Match 1) 10 8 }}", {}, "255.1"),
])
def test_template_placeholders(text: str, data: dict[str, str], expected: str) -> None:
    from nodecache.core.stages.template import Data
    render, _ = compile_text(text)
    values = Data("ip-1.example.org.", "example.org.", "r", ("ip-1", "1"),
                  {"a": "1", "0": "ip-1", "h": "ff"},
                  "IN", "A", "192.0.2.1")
    assert render(values) == expected


@pytest.mark.parametrize("text", [
    "{{ .Message.Question }} A 1.2.3.4", "{{ .Meta \"x\" }}", "{{ printf \"%s\" .Name }}",
    "{{ .Name | lower }}", "{{ .Name }", "{{ index .Match }}", "{{ parseInt .Name 10 8 }}",
    "{{ parseInt .Group.a 1 8 }}", "{{ parseInt .Group.a 10 65 }}",
])
def test_template_unsupported_placeholder(text: str) -> None:
    with pytest.raises(ValueError):
        compile_text(text)


@pytest.mark.parametrize("text, expected", [
    ("a.example. 60 IN A 1.2.3.4", "a.example. 60 IN A 1.2.3.4"),
    ("a.example. A 1.2.3.4", "a.example. 3600 IN A 1.2.3.4"),
    ("a.example. IN 5 TXT \"x y\"", 'a.example. 5 IN TXT "x y"'),
    ("a.example. 60 IN CNAME b.example.", "a.example. 60 IN CNAME b.example."),
    # Relative names are under the root, in the owner and in RDATA (as node-cache answers).
    ("version.bind 0 CH TXT x", 'version.bind. 0 CH TXT "x"'),
    ("relative 60 IN CNAME target", "relative. 60 IN CNAME target."),
    ("foo IN MX 10 mail", "foo. 3600 IN MX 10 mail."),
])
def test_template_record_lines(text: str, expected: str) -> None:
    assert parse_record(text).to_text() == expected


@pytest.mark.parametrize("text", [
    "a.example. 60 IN A not-an-address", "a.example.", "a.example. 60 IN BOGUS x",
])
def test_template_bad_record_lines(text: str) -> None:
    with pytest.raises(ValueError):
        parse_record(text)


TEMPLATES = [
    Template(1, A, ("example.org.",), match=(r"^ip-(?P<n>[0-9]+)[.]",),
             answer=("{{ .Name }} 60 IN A 10.0.0.{{ .Group.n }}",), fallthrough=("ft.example.org.",)),
    Template(1, AAAA, (".",)),                        # noIPv6Lookups: NOERROR, no records
    Template(1, MX, ("example.net.",), rcode=3,
             authority=("example.net. 60 IN SOA ns. host. 1 2 3 4 5",)),
    Template(1, TXT, ("example.net.",), rcode=2),     # rcode SERVFAIL: SERVFAIL, unwritten
]


@pytest.mark.parametrize("question, rcode, expected", [
    (req("ip-7.example.org."), 0, ["ip-7.example.org. A 10.0.0.7"]),
    (req("IP-7.example.org."), 0, ["ip-7.example.org. A 10.0.0.7"]),   # matched lower case
    (req("x.example.org."), None, Failure(2)),        # zone and type fit, no match: SERVFAIL
    (req("x.ft.example.org."), None, None),            # ... unless fallthrough covers it
    (req("x.example.org.", AAAA), 0, []),
    (req("www.example.com.", AAAA), 0, []),
    (req("www.example.com."), None, None),             # no template for A there
    (req("x.example.net.", MX), 3, []),
    (req("x.example.net.", TXT), None, Failure(2)),
    (req("ip-7.example.org.", ANY), 0, ["ip-7.example.org. A 10.0.0.7"]),  # ANY fits every type
])
def test_template(question: Request, rcode: int | None, expected: list[str] | Failure | None) -> None:
    step = TemplateStage(TEMPLATES).serve(question)
    if isinstance(expected, list):
        assert records(step) == expected
        assert isinstance(step, Answer) and step.message.rcode() == rcode
    else:
        assert step == expected


@pytest.mark.parametrize("ederror, option", [
    ((15, ""), "000f"),                          # RFC 8914 section 4.16: Blocked
    ((18, "not here"), "00126e6f742068657265"),  # INFO-CODE, then EXTRA-TEXT (UTF-8)
    ((40000, ""), "9c40"),                       # a code RFC 8914 does not name is kept
])
def test_template_ederror(ederror: tuple[int, str], option: str) -> None:
    stage = TemplateStage([Template(1, A, (".",), rcode=3, ederror=ederror)])
    step = stage.serve(req("a.example."))
    assert isinstance(step, Answer) and step.message.rcode() == 3
    # CoreDNS's SetEdns0(4096, true): size 4096, DO set.
    assert (step.message.edns, step.message.payload, step.message.ednsflags) == (0, 4096, 0x8000)
    assert [(o.otype, o.to_wire().hex()) for o in step.message.options] == [(15, option)]


def test_template_without_ederror_has_no_opt() -> None:
    step = TemplateStage([Template(1, A, (".",), rcode=3)]).serve(req("a.example."))
    assert isinstance(step, Answer) and step.message.opt is None


def test_template_counts_matches_and_render_failures() -> None:
    stage = TemplateStage([Template(1, A, (".",), answer=("{{ .Name }} 60 IN A {{ .Type }}",))])
    assert stage.serve(req("a.example.")) == Failure(2)
    assert stage.failures == 1 and stage.matches == [1]


# -- rewrite ----------------------------------------------------------------

@pytest.mark.parametrize("rules, name, qtype, expected_name, expected_type", [
    ("rewrite name a.example.org b.example.org", "a.example.org.", A, "b.example.org.", A),
    ("rewrite name a.example.org b.example.org", "x.a.example.org.", A, None, A),
    ("rewrite name prefix www web", "www.example.org.", A, "web.example.org.", A),
    ("rewrite name prefix www web", "wwwx.example.org.", A, None, A),  # prefix means 'www.'
    ("rewrite name suffix .example.com .example.org", "a.example.com.", A, "a.example.org.", A),
    ("rewrite name substring svc pod", "a.svc.example.", A, "a.pod.example.", A),
    ("rewrite name regex ^(.*)[.]corp[.]$ {1}.example.net", "a.b.corp.", A, "a.b.example.net.", A),
    ("rewrite type AAAA A", "a.example.", AAAA, "a.example.", A),
    # continue: the next rule sees the rewritten name; stop ends the rules.
    ("rewrite continue name suffix .a. .b.\nrewrite name suffix .b. .c.", "x.a.", A, "x.c.", A),
    ("rewrite name suffix .a. .b.\nrewrite name suffix .b. .c.", "x.a.", A, "x.b.", A),
    ("rewrite name suffix .b. .c.\nrewrite name suffix .a. .b.", "x.a.", A, "x.b.", A),
])
def test_rewrite_question(rules: str, name: str, qtype: int, expected_name: str | None,
                          expected_type: int) -> None:
    stage = RewriteStage(block(".:53 {\n" + rules + "\n}\n").rewrite)
    step = stage.serve(req(name, qtype))
    if expected_name is None:
        assert step is None
        return
    assert isinstance(step, Rewritten)
    assert (step.request.name, step.request.qtype) == (expected_name, expected_type)


def _reverted(rules: str, name: str, answer: list[str]) -> list[str]:
    chain = Chain([RewriteStage(block(".:53 {\n" + rules + "\n}\n").rewrite)])
    resolution = chain.resolve(req(name))
    message = dns.message.make_query(resolution.request.name, "A")
    reply = dns.message.make_response(message)
    reply.answer = [dns.rrset.from_text(*line.split(None, 4)) for line in answer]
    back = dns.message.from_wire(resolution.revert(reply.to_wire()))
    assert back.question[0].name.to_text() == name
    return [f"{rr.name} {rr.ttl} {dns.rdatatype.to_text(rr.rdtype)} {r}"
            for rr in back.answer for r in rr]


@pytest.mark.parametrize("rules, name, answer, expected", [
    ("rewrite name a.example.org b.example.org", "a.example.org.",
     ["b.example.org. 60 IN CNAME c.b.example.org.", "c.b.example.org. 60 IN A 1.2.3.4"],
     ["a.example.org. 60 CNAME c.a.example.org.", "c.a.example.org. 60 A 1.2.3.4"]),
    ("rewrite name suffix .example.com .example.org", "a.example.com.",
     ["a.example.org. 60 IN A 1.2.3.4"], ["a.example.org. 60 A 1.2.3.4"]),   # no answer auto
    ("rewrite name suffix .example.com .example.org answer auto", "a.example.com.",
     ["a.example.org. 60 IN CNAME b.example.org.", "b.example.org. 60 IN A 1.2.3.4"],
     ["a.example.com. 60 CNAME b.example.com.", "b.example.com. 60 A 1.2.3.4"]),
    ("rewrite name regex ^(.*)[.]corp[.]$ {1}.example.net answer name ^(.*)[.]example[.]net[.]$"
     " {1}.corp answer value ^(.*)[.]example[.]net[.]$ {1}.corp", "a.corp.",
     ["a.example.net. 60 IN CNAME b.example.net.", "b.example.net. 60 IN A 1.2.3.4"],
     ["a.corp. 60 CNAME b.corp.", "b.corp. 60 A 1.2.3.4"]),
    ("rewrite ttl a.example. 5", "a.example.", ["a.example. 60 IN A 1.2.3.4"],
     ["a.example. 5 A 1.2.3.4"]),
    ("rewrite ttl a.example. 100-", "a.example.", ["a.example. 60 IN A 1.2.3.4"],
     ["a.example. 100 A 1.2.3.4"]),
    ("rewrite ttl a.example. -30", "a.example.", ["a.example. 60 IN A 1.2.3.4"],
     ["a.example. 30 A 1.2.3.4"]),
])
def test_rewrite_reply(rules: str, name: str, answer: list[str], expected: list[str]) -> None:
    assert _reverted(rules, name, answer) == expected


@pytest.mark.parametrize("rules, name, records, edns, expected", [
    ("rewrite rcode a.example. NXDOMAIN SERVFAIL", "a.example.", 1, False, "SERVFAIL"),
    ("rewrite rcode a.example. NXDOMAIN SERVFAIL", "b.example.", 1, False, "NXDOMAIN"),
    # Once per record: with no record (and no OPT) the RCODE stays; the OPT counts.
    ("rewrite rcode a.example. NXDOMAIN SERVFAIL", "a.example.", 0, False, "NXDOMAIN"),
    ("rewrite rcode a.example. NXDOMAIN SERVFAIL", "a.example.", 0, True, "SERVFAIL"),
    ("rewrite rcode suffix .example. 3 0", "a.example.", 1, False, "NOERROR"),
    ("rewrite rcode regex ^a[.] nxdomain refused", "a.example.", 1, False, "REFUSED"),
    # The last rule first, for each record: one record REFUSED, two SERVFAIL.
    ("rewrite continue rcode a.example. NXDOMAIN REFUSED\n rewrite rcode a.example. REFUSED"
     " SERVFAIL", "a.example.", 1, False, "REFUSED"),
    ("rewrite continue rcode a.example. NXDOMAIN REFUSED\n rewrite rcode a.example. REFUSED"
     " SERVFAIL", "a.example.", 2, False, "SERVFAIL"),
    # stop (the default) ends the rules at the first that matches.
    ("rewrite rcode a.example. NXDOMAIN REFUSED\n rewrite rcode a.example. REFUSED"
     " SERVFAIL", "a.example.", 2, False, "REFUSED"),
])
def test_rewrite_rcode(rules: str, name: str, records: int, edns: bool, expected: str) -> None:
    chain = Chain([RewriteStage(block(".:53 {\n " + rules + "\n}\n").rewrite)])
    resolution = chain.resolve(req(name))
    reply = dns.message.make_response(dns.message.make_query(name, "A", use_edns=edns))
    reply.set_rcode(dns.rcode.NXDOMAIN)
    reply.authority = [dns.rrset.from_text("example.", 60, "IN", "NS", f"ns{n}.example.")
                       for n in range(records)]
    back = dns.message.from_wire(resolution.revert(reply.to_wire()))
    assert dns.rcode.to_text(back.rcode()) == expected


@pytest.mark.parametrize("rules, edns, rcode", [
    ("rewrite rcode a.example. SERVFAIL NXDOMAIN", True, "NXDOMAIN"),   # the OPT counts
    ("rewrite rcode a.example. SERVFAIL NXDOMAIN", False, "SERVFAIL"),  # no record at all
    ("rewrite ttl a.example. 5", True, "SERVFAIL"),
])
def test_rewrite_writes_the_failures_after_a_stop_rule(rules: str, edns: bool, rcode: str) -> None:
    chain = Chain([RewriteStage(block(".:53 {\n " + rules + "\n}\n").rewrite),
                   TemplateStage([Template(1, A, (".",), rcode=2)])])
    resolution = chain.resolve(req("a.example.", edns=edns))
    assert resolution.rcode is None and resolution.answer is not None
    reply = dns.message.from_wire(resolution.answer)
    assert dns.rcode.to_text(reply.rcode()) == rcode
    assert not reply.flags & dns.flags.AA and not (reply.answer or reply.authority)


def test_rewrite_continue_leaves_failures_unwritten() -> None:
    rules = "rewrite continue rcode a.example. SERVFAIL NXDOMAIN"
    chain = Chain([RewriteStage(block(".:53 {\n " + rules + "\n}\n").rewrite),
                   TemplateStage([Template(1, A, (".",), rcode=2)])])
    resolution = chain.resolve(req("a.example.", edns=True))
    assert resolution.rcode == 2 and resolution.answer is None


def test_rewrite_to_an_invalid_name_is_servfail() -> None:
    stage = RewriteStage(block(".:53 {\n rewrite name regex ^(.*)$ {1}{1}{1}{1}\n}\n").rewrite)
    assert stage.serve(req("a" * 60 + ".example.")) == Failure(2)


# -- dns64 ------------------------------------------------------------------

@pytest.mark.parametrize("prefix, address, expected", [
    ("64:ff9b::/96", "192.0.2.33", "64:ff9b::c000:221"),            # RFC 6052 section 2.4
    ("2001:db8::/32", "192.0.2.33", "2001:db8:c000:221::"),
    ("2001:db8:100::/40", "192.0.2.33", "2001:db8:1c0:2:21::"),
    ("2001:db8:122::/48", "192.0.2.33", "2001:db8:122:c000:2:2100::"),
    ("2001:db8:122:300::/56", "192.0.2.33", "2001:db8:122:3c0:0:221::"),
    ("2001:db8:122:344::/64", "192.0.2.33", "2001:db8:122:344:c0:2:2100:0"),
])
def test_dns64_embedding(prefix: str, address: str, expected: str) -> None:
    assert str(embed(ipaddress.IPv6Network(prefix), ipaddress.IPv4Address(address))) == expected


def _reply(rdtype: str, answer: list[str], rcode: int = 0,
           soa: str | None = None) -> bytes:
    query = dns.message.make_query("a.example.", rdtype)
    reply = dns.message.make_response(query)
    reply.set_rcode(rcode)
    reply.answer = [dns.rrset.from_text(*line.split(None, 4)) for line in answer]
    if soa:
        reply.authority = [dns.rrset.from_text(*soa.split(None, 4))]
    return reply.to_wire()


@pytest.mark.parametrize("settings, answer, rcode, wanted", [
    (DNS64Settings(), [], 0, True),                                     # NODATA
    (DNS64Settings(), [], 2, True),                                     # SERVFAIL answer
    (DNS64Settings(), [], 3, False),                                    # NXDOMAIN: never
    (DNS64Settings(), ["a.example. 60 IN AAAA 2001:db8::1"], 0, False),
    (DNS64Settings(translate_all=True), ["a.example. 60 IN AAAA 2001:db8::1"], 0, True),
    (DNS64Settings(translate_all=True), [], 3, False),
])
def test_dns64_wants(settings: DNS64Settings, answer: list[str], rcode: int, wanted: bool) -> None:
    assert DNS64(settings).wants(wire.index_response(_reply("AAAA", answer, rcode))) is wanted


@pytest.mark.parametrize("settings, family, intercepted", [
    (DNS64Settings(), 2, True), (DNS64Settings(), 1, False),
    (DNS64Settings(allow_ipv4=True), 1, True),
])
def test_dns64_intercepts(settings: DNS64Settings, family: int, intercepted: bool) -> None:
    dns64 = DNS64(settings)
    assert dns64.intercepts(AAAA, 1, family) is intercepted
    assert not dns64.intercepts(A, 1, family)


@pytest.mark.parametrize("soa, a_ttl, expected_ttl", [
    (None, 300, 300), (None, 900, 600),            # 600 s without an SOA (CoreDNS)
    ("example. 30 IN SOA ns. host. 1 2 3 4 5", 300, 30),   # RFC 6147 section 5.1.7
])
def test_dns64_synthesis(soa: str | None, a_ttl: int, expected_ttl: int) -> None:
    aaaa = _reply("AAAA", [], soa=soa)
    a = _reply("A", ["a.example. %d IN CNAME b.example." % a_ttl,
                     "b.example. %d IN A 192.0.2.1" % a_ttl, "b.example. %d IN A 192.0.2.2" % a_ttl])
    out = dns.message.from_wire(DNS64(DNS64Settings()).synthesize(aaaa, a))
    lines = sorted(f"{rr.name} {rr.ttl} {dns.rdatatype.to_text(rr.rdtype)} {r}"
                   for rr in out.answer for r in rr)
    assert lines == [f"a.example. {a_ttl} CNAME b.example.",
                     f"b.example. {expected_ttl} AAAA 64:ff9b::c000:201",
                     f"b.example. {expected_ttl} AAAA 64:ff9b::c000:202"]
    assert out.rcode() == 0 and out.id == dns.message.from_wire(aaaa).id


# -- whoami and the chain -------------------------------------------------------

@pytest.mark.parametrize("remote, proto, expected", [
    ("192.0.2.7", "udp", ["a.example. A 192.0.2.7", "_udp.a.example. SRV 0 0 5300 ."]),
    ("2001:db8::7", "tcp", ["a.example. AAAA 2001:db8::7", "_tcp.a.example. SRV 0 0 5300 ."]),
])
def test_whoami(remote: str, proto: str, expected: list[str]) -> None:
    step = WhoamiStage().serve(req("a.example.", remote=remote, port=5300, proto=proto))
    assert isinstance(step, Answer)
    assert sorted(f"{rr.name} {dns.rdatatype.to_text(rr.rdtype)} {r}"
                  for rr in step.message.additional for r in rr) == sorted(expected)
    assert not step.message.answer and all(rr.ttl == 0 for rr in step.message.additional)


def test_chain_order_ignores_corefile_order() -> None:
    chain = chain_for(block(""".:53 {
  whoami
  hosts {
    10.0.0.1 a.example.
  }
  template IN A . {
    answer "{{ .Name }} 60 IN A 10.9.9.9"
  }
  rewrite name b.example. a.example.
}
"""))
    assert [s.name for s in chain.stages] == ["rewrite", "template", "hosts"]
    assert [s.name for s in chain.tail] == ["whoami"]
    resolution = chain.resolve(req("b.example."))
    # rewrite first, then template answers (before hosts), mapped back to the client's name
    assert resolution.plugin == "template" and resolution.answer is not None
    answer = dns.message.from_wire(resolution.answer)
    assert answer.question[0].name.to_text() == "b.example."
    assert [rr.to_text() for rr in answer.answer] == ["b.example. 60 IN A 10.9.9.9"]


def test_rewrite_class() -> None:
    stage = RewriteStage(block(".:53 {\n rewrite class IN CH\n}\n").rewrite)
    step = stage.serve(req("a.example."))
    assert isinstance(step, Rewritten) and step.request.qclass == 3 and step.request.qtype == A
    assert RewriteStage(block(".:53 {\n rewrite class CH IN\n}\n").rewrite).serve(
        req("a.example.")) is None


@pytest.mark.parametrize("name, expected", [
    ("x-ff.example.", ["x-ff.example. A 10.0.0.255"]),
    ("x-1ff.example.", Failure(2)),     # out of range for 8 bits: Go's error, SERVFAIL
    ("x-fg.example.", Failure(2)),      # not hexadecimal
])
def test_template_parse_int(name: str, expected: list[str] | Failure) -> None:
    stage = TemplateStage([Template(1, A, ("example.",), match=(r"^x-(?P<h>[0-9a-z]+)[.]",),
                                    answer=("{{ .Name }} 60 IN A 10.0.0.{{ parseInt .Group.h 16 8 }}",))])
    step = stage.serve(req(name))
    assert (records(step) if isinstance(expected, list) else step) == expected
