"""hosts, template, rewrite, dns64 and whoami: nodecache answers as node-cache does.

Each case is one Corefile and the questions asked of it; every question goes
to both servers twice (the second answer is a cache hit) and the replies must
match (see :mod:`tests.diffkit`). Both forward to the same fake zone.
"""
from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tests.kit.diffkit import Pair, Zone, free_port
from tests.kit import ROOT

ZONE = {
    "www.example.org. A": ["www.example.org. 300 IN A 192.0.2.10"],
    "www.example.org. AAAA": ["www.example.org. 300 IN AAAA 2001:db8::10"],
    "v4.example.org. A": ["v4.example.org. 300 IN A 192.0.2.20", "v4.example.org. 300 IN A 192.0.2.21"],
    "alias.example.org. A": ["alias.example.org. 300 IN CNAME www.example.org.",
                             "www.example.org. 300 IN A 192.0.2.10"],
    "svc.example.net. A": ["svc.example.net. 300 IN A 198.51.100.1"],
    "svc.example.net. SRV": ["svc.example.net. 300 IN SRV 0 0 80 host.example.net."],
    "api.internal.example. A": ["api.internal.example. 300 IN A 10.1.0.1"],
    "api.internal.example. CNAME": ["api.internal.example. 300 IN CNAME real.internal.example."],
    "api.cluster.local. A": ["api.cluster.local. 30 IN A 10.96.0.1"],
    "svc.cluster.local. A": ["svc.cluster.local. 30 IN CNAME api.cluster.local.",
                             "api.cluster.local. 30 IN A 10.96.0.1"],
    "mx.example.org. MX": ["mx.example.org. 300 IN MX 10 mail.example.org."],
}
SOA = "example.org. 60 IN SOA ns.example.org. hostmaster.example.org. 1 7200 3600 86400 60"

HOSTS_FILE = """\
# a comment line
10.0.0.1   one.example.org one-alias.example.org   # trailing comment
10.0.0.2   two.example.org
fd00::2    two.example.org
fd00::3    six.example.org
::ffff:10.0.0.4 mapped.example.org
not-an-ip  broken.example.org
10.0.0.5
10.0.0.6   outside.example.com
10.0.0.1   one-again.example.org
"""


def one_block(plugins: str) -> str:
    """A Corefile with one block: cache, ``plugins``, forward to the zone."""
    return f".:53 {{\n  bind 127.0.0.1\n  cache 30\n  {plugins}\n  forward . UPSTREAM\n}}\n"


async def run(corefile: str, questions: list[tuple[str, str]], tmp_path: Path,
              zone: dict[str, list[str]] | None = None, tcp: bool = False) -> None:
    async with Zone(ZONE if zone is None else zone, SOA) as up:
        text = corefile.replace("UPSTREAM", up.spec).replace("DIR", str(tmp_path))
        for placeholder in ("PROMETHEUS", "HEALTH"):
            text = text.replace(placeholder, f"127.0.0.1:{free_port()}")
        async with Pair(text, tmp_path) as pair:
            for name, rdtype in questions:
                await pair.check(name, rdtype, tcp=tcp)


# -- hosts ------------------------------------------------------------------

HOSTS_QUESTIONS = [
    ("one.example.org.", "A"), ("ONE-Alias.example.org.", "A"), ("one.example.org.", "AAAA"),
    ("two.example.org.", "AAAA"), ("two.example.org.", "A"), ("six.example.org.", "A"),
    ("six.example.org.", "AAAA"), ("one.example.org.", "MX"), ("one.example.org.", "TXT"),
    ("mapped.example.org.", "A"), ("mapped.example.org.", "AAAA"),
    ("broken.example.org.", "A"), ("one-again.example.org.", "A"),
    ("1.0.0.10.in-addr.arpa.", "PTR"), ("2.0.0.10.in-addr.arpa.", "PTR"),
    ("2.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.d.f.ip6.arpa.", "PTR"),
    ("www.example.org.", "A"), ("nothere.example.org.", "A"), ("www.example.org.", "MX"),
    ("outside.example.com.", "A"), ("svc.example.net.", "A"),
    ("9.9.9.9.in-addr.arpa.", "PTR"),
]


@pytest.mark.parametrize("options", [
    "",
    "fallthrough",
    "fallthrough example.org",
    "fallthrough other.example\n    ttl 60",
    "no_reverse\n    fallthrough",
    "ttl 1\n    reload 0s\n    fallthrough",
])
async def test_hosts_file(options: str, tmp_path: Path) -> None:
    (tmp_path / "hosts").write_text(HOSTS_FILE)
    corefile = f""".:53 {{
  bind 127.0.0.1
  cache 30
  hosts DIR/hosts {{
    {options}
  }}
  forward . UPSTREAM
}}
"""
    await run(corefile, HOSTS_QUESTIONS, tmp_path)


async def test_hosts_inline_and_zones(tmp_path: Path) -> None:
    (tmp_path / "hosts").write_text(HOSTS_FILE)
    corefile = """.:53 {
  bind 127.0.0.1
  cache 30
  hosts DIR/hosts example.org {
    10.0.0.9 inline.example.org one.example.org
    fd00::9 inline.example.org
    10.0.0.10 inline.example.com
    fallthrough
  }
  forward . UPSTREAM
}
"""
    await run(corefile, [*HOSTS_QUESTIONS, ("inline.example.org.", "A"),
                         ("inline.example.org.", "AAAA"), ("inline.example.com.", "A"),
                         ("9.0.0.10.in-addr.arpa.", "PTR"), ("10.0.0.10.in-addr.arpa.", "PTR")],
              tmp_path)


async def test_hosts_missing_file_without_cache(tmp_path: Path) -> None:
    corefile = """.:53 {
  bind 127.0.0.1
  hosts DIR/absent {
    10.0.0.9 inline.example.org
  }
  forward . UPSTREAM
}
"""
    await run(corefile, [("inline.example.org.", "A"), ("inline.example.org.", "AAAA"),
                         ("www.example.org.", "A")], tmp_path)


async def test_hosts_reload(tmp_path: Path) -> None:
    hosts = tmp_path / "hosts"
    hosts.write_text("10.0.0.1 r.example.org\n")
    corefile = ".:53 {\n  bind 127.0.0.1\n  hosts DIR/hosts {\n    reload 1s\n  }\n}\n"
    async with Zone(ZONE, SOA) as up, \
            Pair(corefile.replace("DIR", str(tmp_path)).replace("UPSTREAM", up.spec),
                 tmp_path) as pair:
        await pair.check("r.example.org.", "A")
        hosts.write_text("10.0.0.2 r.example.org\n10.0.0.3 s.example.org\n")
        deadline = asyncio.get_running_loop().time() + 10.0  # s: reload 1s, with margin
        while True:
            ours, theirs = await pair.both("s.example.org.", "A")
            if ours is not None and theirs is not None and ours.answer and theirs.answer:
                break
            assert asyncio.get_running_loop().time() < deadline, "the new file was not read"
            await asyncio.sleep(0.2)
        for name in ("r.example.org.", "s.example.org."):
            await pair.check(name, "A")


async def test_hosts_over_tcp(tmp_path: Path) -> None:
    (tmp_path / "hosts").write_text(HOSTS_FILE)
    corefile = """.:53 {
  bind 127.0.0.1
  cache 30
  hosts DIR/hosts {
    fallthrough
  }
  forward . UPSTREAM
}
"""
    await run(corefile, HOSTS_QUESTIONS[:6], tmp_path, tcp=True)


# -- template ---------------------------------------------------------------

TEMPLATE_QUESTIONS = [
    ("www.example.org.", "A"), ("www.example.org.", "AAAA"), ("ip-10-1-2-3.example.org.", "A"),
    ("IP-10-1-2-3.Example.org.", "A"), ("ip-10-1-2-3.example.org.", "AAAA"),
    ("ip-10-1-2-3.example.org.", "TXT"), ("host.example.org.", "A"), ("svc.example.net.", "A"),
    ("svc.example.net.", "AAAA"), ("x.example.org.", "MX"), ("mx.example.org.", "MX"),
    ("deep.sub.example.org.", "A"), ("v4.example.org.", "A"), ("alias.example.org.", "A"),
    ("ip0a7b7b7b.example.org.", "A"), ("ip0azz7b7b.example.org.", "A"),
]


@pytest.mark.parametrize("templates", [
    # The node-local-dns Helm chart's noIPv6Lookups.
    "template IN AAAA . {\n    rcode NOERROR\n  }",
    # Answers built from the match (the CoreDNS README's ip-a-b-c-d example).
    """template IN A example.org {
    match "^ip-(?P<a>[0-9]+)-(?P<b>[0-9]+)-(?P<c>[0-9]+)-(?P<d>[0-9]+)[.]example[.]org[.]$"
    answer "{{ .Name }} 60 IN A {{ .Group.a }}.{{ .Group.b }}.{{ .Group.c }}.{{ .Group.d }}"
    fallthrough
  }""",
    # No match and no fallthrough: SERVFAIL for the zone's A questions.
    """template IN A example.org {
    match ^ip-([0-9]+)-
    answer "{{ .Name }} 60 IN A 10.{{ index .Match 1 }}.0.1"
  }""",
    # NXDOMAIN with an SOA, for a whole zone.
    """template ANY ANY example.net {
    rcode NXDOMAIN
    authority "example.net. 60 IN SOA ns.example.net. hostmaster.example.net. 1 7200 3600 86400 60"
  }""",
    # Every field, several records and sections, class and type placeholders.
    """template IN ANY example.org {
    match (^|[.])(?P<label>[a-z0-9-]+)[.]example[.]org[.]$
    answer "{{ .Name }} 30 {{ .Class }} TXT \\"{{ .Type }} {{ .Zone }} {{ .Group.label }}\\""
    additional "extra.example.org. 30 IN A 192.0.2.99"
    authority "example.org. 30 IN NS ns1.example.org."
    fallthrough deep.sub.example.org
  }""",
    # Two templates for one zone, the first falling through to the second; the
    # CNAMEs' targets are looked up through the server (forward, or the other template).
    """template IN A example.org {
    match ^www[.]
    answer "{{ .Name }} 60 IN CNAME target.example.org."
    fallthrough
  }
  template IN A example.org {
    match ^v4[.]
    answer "{{ .Name }} 60 IN CNAME alias.example.org."
    answer "{{ .Name }} 60 IN CNAME host.example.org."
    fallthrough
  }
  template IN A example.org {
    match ^host[.]
    answer "{{ .Name }} 60 IN A 192.0.2.77"
    fallthrough
  }""",
    # rcode SERVFAIL and REFUSED answers.
    """template IN MX . {
    rcode SERVFAIL
  }
  template IN TXT . {
    rcode REFUSED
  }""",
    # The client's address and the expression that matched.
    """template IN TXT . {
    match ^(?P<first>[^.]+)[.]
    answer "{{ .Name }} 60 IN TXT \\"{{ .Remote }}\\" \\"{{ .Regex }}\\" \\"{{ index .Group \\"first\\" }}\\""
  }""",
    # parseInt (the CoreDNS README's hexadecimal addresses); 'zz' does not parse: SERVFAIL.
    """template IN A example.org {
    match "^ip0a(?P<b>[a-z0-9]{2})(?P<c>[a-f0-9]{2})(?P<d>[a-f0-9]{2})[.]example[.]org[.]$"
    answer "{{ .Name }} 60 IN A 10.{{ parseInt .Group.b 16 8 }}.{{ parseInt (index .Match 2) 16 8 }}.{{ parseInt .Group.d 16 8 }}"
    fallthrough
  }""",
    # A record that does not render to a valid RR: SERVFAIL.
    """template IN A example.org {
    answer "{{ .Name }} 60 IN A not-an-address"
  }""",
    # Names without the final dot are under the root (miekg/dns's NewRR).
    """template IN MX example.org {
    answer "{{ .Name }} 60 IN MX 10 mail.example.org"
    additional "mail.example.org 60 IN A 192.0.2.5"
    authority "example.org 60 IN NS ns1"
  }""",
    # rewrite rcode on template answers: only one with records is rewritten.
    """template IN MX example.org {
    rcode NXDOMAIN
    authority "example.org. 60 IN SOA ns.example.org. hostmaster.example.org. 1 7200 3600 86400 60"
  }
  template IN TXT example.org {
    rcode NXDOMAIN
  }
  rewrite rcode suffix .example.org NXDOMAIN NOERROR""",
    # rcode and fallthrough given twice: the last counts.
    """template IN A example.org {
    match ^www[.]
    rcode NXDOMAIN
    rcode REFUSED
    fallthrough nothing.example.org
    fallthrough
  }""",
    # ederror's OPT counts as a record for rewrite rcode: the empty NXDOMAIN is rewritten.
    """template IN TXT example.org {
    rcode NXDOMAIN
    ederror 15 "blocked"
  }
  rewrite rcode suffix .example.org NXDOMAIN NOERROR""",
])
async def test_template(templates: str, tmp_path: Path) -> None:
    await run(one_block(templates), TEMPLATE_QUESTIONS, tmp_path)


@pytest.mark.parametrize("rewrite", [
    "rewrite rcode suffix .example.org SERVFAIL NXDOMAIN",
    "rewrite continue rcode suffix .example.org SERVFAIL NXDOMAIN",  # unwritten: kept
    # (Not "REFUSED NOERROR": node-cache then writes twice, see docs/plugin-chain.md.)
    "rewrite name exact other.example.org only.example.org",
    "rewrite continue name exact other.example.org none.example.org\n"
    "  rewrite edns0 nsid set",
])
async def test_rewrite_writes_template_failures(rewrite: str, tmp_path: Path) -> None:
    """After a stop rule, rewrite writes the SERVFAIL or REFUSED a template returns:
    an empty reply (with an OPT when the query has one), its RCODE mapped."""
    corefile = one_block(f"""template IN MX example.org {{
    match ^only[.]
    answer "{{{{ .Name }}}} 60 IN MX 10 mail.example.org."
  }}
  template IN TXT example.org {{
    rcode REFUSED
  }}
  {rewrite}""")
    async with Zone(ZONE, SOA) as up:
        async with Pair(corefile.replace("UPSTREAM", up.spec), tmp_path) as pair:
            for name, rdtype, edns in [("other.example.org.", "MX", 0),
                                       ("other.example.org.", "TXT", 0),
                                       ("noedns.example.org.", "MX", None),
                                       ("noedns.example.org.", "TXT", None),
                                       ("only.example.org.", "MX", 0)]:
                await pair.check(name, rdtype, edns=edns)


async def test_template_ederror(tmp_path: Path) -> None:
    """node-cache's cache drops the answer's OPT, EDE included: the client gets
    the server's OPT (its own size and DO) or none, from the cache or not."""
    corefile = one_block("""template IN A example.org {
    match ^blocked[.]
    answer "{{ .Name }} 60 IN A 0.0.0.0"
    ederror 15 "blocked by policy"
    fallthrough
  }
  template IN TXT example.org {
    rcode NXDOMAIN
    ederror 18
  }""")
    async with Zone(ZONE, SOA) as up:
        async with Pair(corefile.replace("UPSTREAM", up.spec), tmp_path) as pair:
            for name, rdtype, query in [("blocked.example.org.", "A", {}),
                                        ("blocked.example.org.", "A", {"dnssec": True}),
                                        ("x.example.org.", "TXT", {"edns": None}),
                                        ("x.example.org.", "TXT", {"payload": 4096}),
                                        ("www.example.org.", "A", {})]:
                for _ in range(2):
                    await pair.check(name, rdtype, times=1, **query)
                    ours, theirs = await pair.both(name, rdtype, **query)
                    assert ours is not None and theirs is not None
                    assert ([o.to_wire() for o in ours.options]
                            == [o.to_wire() for o in theirs.options]), (name, rdtype, query)


# -- rewrite ----------------------------------------------------------------

REWRITE_QUESTIONS = [
    ("www.example.org.", "A"), ("front.example.org.", "A"), ("front.example.org.", "AAAA"),
    ("FRONT.example.org.", "A"), ("api.external.example.", "A"), ("web.example.com.", "A"),
    ("alias.example.com.", "A"), ("svc.corp.", "A"), ("svc.corp.", "SRV"), ("mx.corp.", "MX"),
    ("pre-www.example.org.", "A"), ("nomatch.example.org.", "A"), ("v4.example.org.", "AAAA"),
    ("api.internal.example.", "A"), ("api.internal.example.", "CNAME"),
]


@pytest.mark.parametrize("rules", [
    "rewrite name front.example.org www.example.org",
    "rewrite name exact front.example.org www.example.org",
    "rewrite name suffix .example.com .example.org",
    "rewrite name suffix .example.com .example.org answer auto",
    "rewrite name prefix pre-www www",
    "rewrite name prefix pre-www www answer auto",
    "rewrite name substring external internal answer auto",
    "rewrite name substring external internal",
    "rewrite name regex (.*)[.]corp[.]$ {1}.example.net answer auto",
    "rewrite name regex (.*)[.]corp[.]$ {1}.example.net",
    "rewrite name regex (.*)[.]corp[.]$ {1}.example.net answer name (.*)[.]example[.]net[.] {1}.corp"
    " answer value (.*)[.]example[.]net[.] {1}.corp",
    "rewrite name regex ^(.*)[.]example[.]com[.]$ {1}.example.org answer name ^(.*)[.]example[.]org[.]$"
    " {1}.example.com answer value ^(.*)[.]example[.]org[.]$ {1}.example.com",
    "rewrite continue name suffix .example.com .example.org answer auto\n"
    "  rewrite name exact front.example.org www.example.org",
    "rewrite stop name suffix .example.com .example.org answer auto\n"
    "  rewrite name exact web.example.org www.example.org",
    "rewrite type AAAA A",
    "rewrite ttl www.example.org 5",
    "rewrite ttl suffix .example.org 10-20",
    "rewrite ttl regex ^v4[.] 400-",
    "rewrite continue ttl exact www.example.org -7\n  rewrite name front.example.org www.example.org",
    "rewrite stop {\n    name regex (.*)[.]corp[.]$ {1}.example.net\n    answer auto\n  }",
    "rewrite rcode nomatch.example.org NXDOMAIN SERVFAIL",
    "rewrite rcode suffix .example.org NOERROR 5",
    "rewrite rcode regex ^(front|nomatch)[.] nxdomain refused",
    # The rcode rules run once per record of the reply (OPT included), the last
    # rule first: NXDOMAIN with an SOA and an OPT ends as SERVFAIL, not REFUSED.
    "rewrite continue rcode suffix .org. NXDOMAIN REFUSED\n"
    "  rewrite rcode substring example REFUSED SERVFAIL",
    "rewrite continue name front.example.org nomatch.example.org\n"
    "  rewrite rcode prefix nomatch NXDOMAIN NOERROR",
])
async def test_rewrite(rules: str, tmp_path: Path) -> None:
    await run(one_block(rules), REWRITE_QUESTIONS, tmp_path)


# -- dns64 and whoami -------------------------------------------------------

DNS64_QUESTIONS = [
    ("www.example.org.", "AAAA"), ("v4.example.org.", "AAAA"), ("alias.example.org.", "AAAA"),
    ("nothere.example.org.", "AAAA"), ("v4.example.org.", "A"), ("mx.example.org.", "AAAA"),
]


@pytest.mark.parametrize("dns64", [
    "dns64 {\n    allow_ipv4\n  }",
    "dns64 {\n    prefix 2001:db8:64::/64\n    allow_ipv4\n  }",
    "dns64 {\n    prefix 2001:db8::/32\n    translate_all\n    allow_ipv4\n  }",
    "dns64",  # IPv4 clients: untouched
])
async def test_dns64(dns64: str, tmp_path: Path) -> None:
    await run(one_block(dns64), DNS64_QUESTIONS, tmp_path)


@pytest.mark.parametrize("dns64", [
    "dns64",
    "dns64 2001:db8:64::/96",
    "dns64 {\n    prefix 2001:db8:6400::/40\n    translate_all\n  }",
])
async def test_dns64_ipv6_clients(dns64: str, tmp_path: Path) -> None:
    # The default: only IPv6 clients get synthesized answers.
    async with Zone(ZONE, SOA) as up:
        corefile = one_block(dns64).replace("127.0.0.1", "::1").replace("UPSTREAM", up.spec)
        async with Pair(corefile, tmp_path, host="::1") as pair:
            for name, rdtype in DNS64_QUESTIONS:
                await pair.check(name, rdtype)
            await pair.check("www.example.org.", "AAAA", tcp=True)
            await pair.check("svc.cluster.local.", "AAAA", tcp=True)  # the A look-up over TCP
            synthesized = await pair.check("v4.example.org.", "AAAA")
            assert synthesized is not None and len(synthesized.answer[0]) == 2


async def test_whoami_after_forward(tmp_path: Path) -> None:
    corefile = """.:53 {
  bind 127.0.0.1
  whoami
  forward example.org UPSTREAM
}
"""
    async with Zone(ZONE, SOA) as up:
        async with Pair(corefile.replace("UPSTREAM", up.spec), tmp_path) as pair:
            await pair.check("www.example.org.", "A")
            ours, theirs = await pair.both("who.example.net.", "A")
            assert ours is not None and theirs is not None
            # The port differs (each server sees its own client socket): compare the rest.
            assert len(ours.additional) == len(theirs.additional) == 2
            for mine, ref in zip(sorted(ours.additional, key=str), sorted(theirs.additional, key=str)):
                assert (mine.name, mine.rdtype, mine.ttl) == (ref.name, ref.rdtype, ref.ttl)
            assert {r.to_text() for rr in ours.additional for r in rr
                    if rr.rdtype == 1} == {"127.0.0.1"}
            assert ours.rcode() == theirs.rcode() and ours.flags == theirs.flags
            over_tcp, reference_tcp = await pair.both("who.example.net.", "A", tcp=True)
            assert over_tcp is not None and reference_tcp is not None
            assert {rr.name.to_text() for rr in over_tcp.additional} \
                == {rr.name.to_text() for rr in reference_tcp.additional} \
                == {"who.example.net.", "_tcp.who.example.net."}


async def test_nothing_takes_the_name(tmp_path: Path) -> None:
    corefile = """.:53 {
  bind 127.0.0.1
  hosts {
    10.0.0.1 a.example.org
    fallthrough
  }
  forward example.org UPSTREAM {
    except skip.example.org
  }
}
"""
    await run(corefile, [("a.example.org.", "A"), ("www.example.org.", "A"),
                         ("x.skip.example.org.", "A"), ("www.example.net.", "A")], tmp_path)


# -- Corefiles as installers write them ----------------------------------------

def node_local(cluster: str = "", root: str = "") -> str:
    """The two blocks installers generate (cluster domain over TCP, the rest), with
    ``cluster`` and ``root`` lines added to them."""
    return f"""cluster.local:53 {{
    errors
    cache {{
        success 9984 30
        denial 9984 5
    }}
    reload
    loop
    bind 127.0.0.1
{cluster}    forward . UPSTREAM {{
        force_tcp
    }}
    prometheus PROMETHEUS
    health HEALTH
}}
.:53 {{
    errors
    cache 30
    reload
    loop
    bind 127.0.0.1
{root}    forward . UPSTREAM
    prometheus PROMETHEUS
}}
"""


async def test_kubespray_shape(tmp_path: Path) -> None:
    # kubespray: hosts in the blocks when custom host entries are configured.
    (tmp_path / "hosts").write_text("10.0.0.1 registry.example.org\n")
    hosts = "    hosts DIR/hosts {\n        fallthrough\n    }\n"
    await run(node_local(root=hosts), [
        ("registry.example.org.", "A"), ("registry.example.org.", "AAAA"),
        ("www.example.org.", "A"), ("api.cluster.local.", "A"), ("svc.cluster.local.", "A")],
        tmp_path)


async def test_helm_chart_no_ipv6_lookups(tmp_path: Path) -> None:
    # The node-local-dns Helm chart's noIPv6Lookups: in every block.
    template = "    template IN AAAA . {\n        rcode NOERROR\n    }\n"
    await run(node_local(template, template), [
        ("api.cluster.local.", "AAAA"), ("api.cluster.local.", "A"),
        ("www.example.org.", "AAAA"), ("www.example.org.", "A")], tmp_path)


async def test_kops_dns64_shape(tmp_path: Path) -> None:
    # kops, IPv6-only clusters: dns64 in the root block.
    dns64 = "    dns64 {\n        allow_ipv4\n    }\n"
    await run(node_local(root=dns64), [
        ("v4.example.org.", "AAAA"), ("www.example.org.", "AAAA"),
        ("api.cluster.local.", "AAAA")], tmp_path)


async def test_official_template_with_hosts_and_no_ipv6(tmp_path: Path) -> None:
    # The repository's Corefile.nodelocal as rendered for a node, with the lines
    # kubespray and the Helm chart add to every block.
    (tmp_path / "hosts").write_text("10.0.0.1 registry.example.org\n10.0.0.2 db.cluster.local\n")
    template = (ROOT / "Corefile.nodelocal").read_text()
    extra = ("    hosts DIR/hosts {\n        fallthrough\n    }\n"
             "    template IN AAAA . {\n        rcode NOERROR\n    }\n")
    corefile = (template.replace("__PILLAR__DNS__DOMAIN__", "cluster.local")
                .replace("bind __PILLAR__LOCAL__DNS__ __PILLAR__DNS__SERVER__", "bind 127.0.0.1")
                .replace("__PILLAR__CLUSTER__DNS__", "UPSTREAM")
                .replace("__PILLAR__UPSTREAM__SERVERS__", "UPSTREAM")
                .replace("prometheus :9253", "prometheus PROMETHEUS")
                .replace("health __PILLAR__LOCAL__DNS__:8099", "health HEALTH")
                .replace("    ready __PILLAR__LOCAL__DNS__:8181\n", "")  # node-cache has no ready
                .replace("    errors\n", "    errors\n" + extra))
    assert "__PILLAR__" not in corefile
    await run(corefile, [("api.cluster.local.", "A"), ("api.cluster.local.", "AAAA"),
                         ("db.cluster.local.", "A"), ("registry.example.org.", "A"),
                         ("www.example.org.", "A"), ("www.example.org.", "AAAA"),
                         ("1.0.0.10.in-addr.arpa.", "PTR"), ("9.9.9.9.in-addr.arpa.", "PTR")],
              tmp_path)


async def test_all_together(tmp_path: Path) -> None:
    (tmp_path / "hosts").write_text(HOSTS_FILE)
    corefile = """.:53 {
  bind 127.0.0.1
  cache 30
  dns64 {
    allow_ipv4
  }
  forward . UPSTREAM
  hosts DIR/hosts {
    fallthrough
  }
  template IN A example.org {
    match ^tpl[.]
    answer "{{ .Name }} 60 IN A 192.0.2.55"
    fallthrough
  }
  template IN A example.org {
    match ^cn[.]
    answer "{{ .Name }} 60 IN CNAME www.example.org."
    fallthrough
  }
  rewrite name suffix .example.com .example.org answer auto
}
"""
    await run(corefile, [("one.example.com.", "A"), ("one.example.com.", "AAAA"),
                         ("tpl.example.com.", "A"), ("tpl.example.org.", "AAAA"),
                         ("www.example.com.", "A"), ("v4.example.com.", "AAAA"),
                         ("two.example.org.", "AAAA"), ("cn.example.com.", "A"),
                         ("cn.example.org.", "A"), ("cn.example.com.", "AAAA")], tmp_path)
