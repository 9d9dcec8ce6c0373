"""Configuration of the answering plugins: every error (``file:line:column: message``), and check-config.

Same shape as tests/config/test_config_errors.py: every bad option or argument of
hosts, template, rewrite, dns64 and whoami, located at the offending token.
"""
from __future__ import annotations

import pytest

from nodecache.config import parse_text
from nodecache.errors import ConfigError

CASES: list[tuple[str, str]] = [
    ('.:53 {\n  hosts {\n    ttl 0\n  }\n}',
     "Corefile:3:9: hosts: expected a TTL in seconds from 1 to 65535 after 'ttl', found '0'"),
    ('.:53 {\n  hosts {\n    ttl 70000\n  }\n}',
     "Corefile:3:9: hosts: expected a TTL in seconds from 1 to 65535 after 'ttl', found '70000'"),
    ('.:53 {\n  hosts {\n    ttl\n  }\n}',
     "Corefile:3:5: hosts: expected a TTL in seconds from 1 to 65535 after 'ttl', found end of line"),
    ('.:53 {\n  hosts {\n    ttl 5 6\n  }\n}',
     "Corefile:3:11: hosts: expected end of line after 'ttl 5', found '6'"),
    ('.:53 {\n  hosts {\n    reload 5\n  }\n}',
     "Corefile:3:12: hosts: expected a DURATION (0s never re-reads the file) after 'reload', found '5' (missing unit, as in 5s)"),
    ('.:53 {\n  hosts {\n    reload soon\n  }\n}',
     "Corefile:3:12: hosts: expected a DURATION (0s never re-reads the file) after 'reload', found 'soon' (durations look like 500ms, 5s or 1m30s)"),
    ('.:53 {\n  hosts {\n    no_reverse yes\n  }\n}',
     "Corefile:3:16: hosts: expected end of line after 'no_reverse', found 'yes'"),
    ('.:53 {\n  hosts {\n    fallthrough example..org\n  }\n}',
     "Corefile:3:17: hosts: expected a zone after 'fallthrough', found 'example..org'"),
    ('.:53 {\n  hosts {\n    fallthrough\n    10.0.0.1 a.example.org\n  }\n}',
     "Corefile:4:5: hosts: expected an option (ttl, no_reverse, reload, fallthrough), found '10.0.0.1' (inline entries must come before fallthrough)"),
    ('.:53 {\n  hosts {\n    unknown_option\n  }\n}',
     "Corefile:3:5: hosts: expected an option (ttl, no_reverse, reload, fallthrough) or an entry 'ADDRESS NAME...', found 'unknown_option'"),
    ('.:53 {\n  hosts {\n    10.0.0.1\n  }\n}',
     "Corefile:3:5: hosts: expected a NAME after '10.0.0.1', found end of line"),
    ('.:53 {\n  hosts {\n    ttl 5\n    ttl 6\n  }\n}',
     "Corefile:4:5: hosts: option 'ttl' given twice (first at Corefile:3:5)"),
    ('.:53 {\n  hosts /etc/hosts example..org\n}',
     "Corefile:2:20: hosts: expected a zone after 'hosts /etc/hosts', found 'example..org'"),
    ('.:53 {\n  hosts\n  hosts\n}',
     'Corefile:3:3: hosts: plugin used twice in one server block (first at Corefile:2:3)'),
    ('.:53 {\n  hosts {\n    ttl 5 {\n    }\n  }\n}',
     "Corefile:3:11: hosts: expected end of line after 'ttl 5', found '{' ('ttl' takes no options block)"),
    ('.:53 {\n  template\n}',
     "Corefile:2:3: template: expected a CLASS (IN, CH, ANY...) after 'template', found end of line"),
    ('.:53 {\n  template IN\n}',
     "Corefile:2:12: template: expected a TYPE (A, AAAA, ANY...) after 'template IN', found end of line"),
    ('.:53 {\n  template XX A\n}',
     "Corefile:2:12: template: expected a CLASS (IN, CH, ANY...) after 'template', found 'XX'"),
    ('.:53 {\n  template IN BOGUS\n}',
     "Corefile:2:15: template: expected a TYPE (A, AAAA, ANY...) after 'template IN', found 'BOGUS'"),
    ('.:53 {\n  template IN A example..org\n}',
     "Corefile:2:17: template: expected a zone after 'template IN A', found 'example..org'"),
    ('.:53 {\n  template IN A {\n    match\n  }\n}',
     "Corefile:3:5: template: expected a REGEX after 'match', found end of line"),
    ('.:53 {\n  template IN A {\n    match (unclosed\n  }\n}',
     "Corefile:3:11: template: expected a REGEX after 'match', found '(unclosed' (missing ), unterminated subpattern at position 0)"),
    ('.:53 {\n  template IN A {\n    answer\n  }\n}',
     "Corefile:3:5: template: expected an RR such as '{{ .Name }} 60 IN A 192.0.2.1' after 'answer', found end of line"),
    ('.:53 {\n  template IN A {\n    answer "{{ .Meta \\"x\\" }} 60 IN A 1.2.3.4"\n  }\n}',
     'Corefile:3:12: template: unsupported placeholder \'{{ .Meta "x" }}\' (supported: {{ .Name }}, {{ .Zone }}, {{ .Class }}, {{ .Type }}, {{ .Regex }}, {{ .Remote }}, {{ .Group.NAME }}, {{ index .Match N }}, {{ index .Group "NAME" }}, {{ parseInt .Group.NAME BASE BITS }})'),
    ('.:53 {\n  template IN A {\n    answer "{{ .Name }} 60 IN A {{ .Group.ip }}"\n  }\n}',
     "Corefile:3:12: template: group 'ip' is not defined by 'match .*' (it would render as text in the answer)"),
    ('.:53 {\n  template IN A {\n    match ^(a)$\n    answer "{{ .Name }} 60 IN A {{ index .Match 2 }}"\n  }\n}',
     "Corefile:4:12: template: match 2 is not defined by 'match ^(a)$' (it would render as text in the answer)"),
    ('.:53 {\n  template IN A {\n    additional "{{ .Name }"\n  }\n}',
     "Corefile:3:16: template: unbalanced '{{' or '}}' in '{{ .Name }'"),
    ('.:53 {\n  template IN A {\n    rcode NOPE\n  }\n}',
     "Corefile:3:11: template: expected an RCODE (NOERROR, NXDOMAIN, SERVFAIL, REFUSED...) after 'rcode', found 'NOPE'"),
    ('.:53 {\n  template IN A {\n    rcode\n  }\n}',
     "Corefile:3:5: template: expected an RCODE (NOERROR, NXDOMAIN, SERVFAIL, REFUSED...) after 'rcode', found end of line"),
    ('.:53 {\n  template IN A {\n    rcode NOERROR NXDOMAIN\n  }\n}',
     "Corefile:3:19: template: expected end of line after 'rcode NOERROR', found 'NXDOMAIN'"),
    ('.:53 {\n  template IN A {\n    ederror\n  }\n}',
     "Corefile:3:5: template: expected an extended DNS error code (0 to 65535) after 'ederror', found end of line"),
    ('.:53 {\n  template IN A {\n    ederror x\n  }\n}',
     "Corefile:3:13: template: expected an extended DNS error code (0 to 65535) after 'ederror', found 'x'"),
    ('.:53 {\n  template IN A {\n    ederror 70000\n  }\n}',
     "Corefile:3:13: template: expected an extended DNS error code (0 to 65535) after 'ederror', found '70000'"),
    ('.:53 {\n  template IN A {\n    ederror 15 a b\n  }\n}',
     "Corefile:3:18: template: expected end of line after 'ederror 15 a', found 'b'"),
    ('.:53 {\n  template IN A {\n    bogus\n  }\n}',
     "Corefile:3:5: template: expected an option (match, answer, additional, authority, rcode, ederror, fallthrough, upstream), found 'bogus'"),
    ('.:53 {\n  template IN A {\n    fallthrough a..b\n  }\n}',
     "Corefile:3:17: template: expected a zone after 'fallthrough', found 'a..b'"),
    ('.:53 {\n  rewrite\n}',
     "Corefile:2:3: rewrite: expected a rule (name, type, class, ttl, rcode or edns0, after an optional continue or stop) after 'rewrite', found end of line"),
    ('.:53 {\n  rewrite name\n}',
     "Corefile:2:11: rewrite: expected a match type (exact, prefix, suffix, substring, regex) after 'rewrite name', found end of line"),
    ('.:53 {\n  rewrite name a\n}',
     "Corefile:2:16: rewrite: expected a TO name after 'rewrite name a', found end of line"),
    ('.:53 {\n  rewrite continue\n}',
     "Corefile:2:11: rewrite: expected a rule (name, type, class, ttl, rcode, edns0) after 'rewrite continue', found end of line"),
    ('.:53 {\n  rewrite bogus a b\n}',
     "Corefile:2:11: rewrite: expected a rule (name, type, class, ttl, rcode, edns0), found 'bogus'"),
    ('.:53 {\n  rewrite answer name a b\n}',
     "Corefile:2:11: rewrite: expected a rule (name, type, class, ttl, rcode, edns0), found 'answer' (response rewrites must begin with a name rule)"),
    ('.:53 {\n  rewrite cname exact a.example. b.example.\n}',
     'Corefile:2:11: rewrite: the cname rule is not supported'),
    ('.:53 {\n  rewrite edns0 bogus set\n}',
     "Corefile:2:17: rewrite: expected an EDNS0 rule type (local, nsid, subnet) after 'rewrite edns0', found 'bogus'"),
    ('.:53 {\n  rewrite edns0 local frob 1\n}',
     "Corefile:2:23: rewrite: expected an action (set, append, replace, unset) after 'rewrite edns0 local', found 'frob'"),
    ('.:53 {\n  rewrite edns0 local set 0xffee\n}',
     "Corefile:2:27: rewrite: expected DATA (text, 0xHEX or a variable such as {client_ip}) after 'rewrite edns0 local set 0xffee', found end of line"),
    ('.:53 {\n  rewrite edns0 local set 70000 a\n}',
     "Corefile:2:27: rewrite: expected an option CODE (0 to 65535) after 'rewrite edns0 local set', found '70000'"),
    ('.:53 {\n  rewrite edns0 local set 0xffee 0xzz\n}',
     "Corefile:2:34: rewrite: expected hexadecimal DATA after '0x', found '0xzz'"),
    ('.:53 {\n  rewrite edns0 local set 0xffee {server_ip}\n}',
     "Corefile:2:34: rewrite: {server_ip} is not supported (supported: {qname}, {qtype}, {client_ip}, {client_port}, {protocol})"),
    ('.:53 {\n  rewrite edns0 local set 0xffee {bogus}\n}',
     "Corefile:2:34: rewrite: expected a variable ({qname}, {qtype}, {client_ip}, {client_port}, {protocol}) or a metadata label ({plugin/name}), found '{bogus}'"),
    ('.:53 {\n  rewrite edns0 local unset 0xffee x\n}',
     "Corefile:2:36: rewrite: expected end of line after 'rewrite edns0 local unset 0xffee', found 'x'"),
    ('.:53 {\n  rewrite edns0 nsid unset revert\n}',
     "Corefile:2:28: rewrite: expected end of line after 'rewrite edns0 nsid unset', found 'revert'"),
    ('.:53 {\n  rewrite edns0 subnet set 33 56\n}',
     "Corefile:2:28: rewrite: expected an IPv4 prefix length (0 to 32) after 'rewrite edns0 subnet set', found '33'"),
    ('.:53 {\n  rewrite edns0 subnet set 24 129\n}',
     "Corefile:2:31: rewrite: expected an IPv6 prefix length (0 to 128) after 'rewrite edns0 subnet set 24', found '129'"),
    ('.:53 {\n  rewrite rcode\n}',
     "Corefile:2:11: rewrite: expected a NAME after 'rewrite rcode', found end of line"),
    ('.:53 {\n  rewrite rcode a.example SERVFAIL\n}',
     "Corefile:2:27: rewrite: expected an RCODE (a name such as NXDOMAIN, or 0 to 23) after 'rewrite rcode a.example SERVFAIL', found end of line"),
    ('.:53 {\n  rewrite rcode a.example 24 NOERROR\n}',
     "Corefile:2:27: rewrite: expected an RCODE (a name such as NXDOMAIN, or 0 to 23) after 'rewrite rcode a.example', found '24'"),
    ('.:53 {\n  rewrite rcode a.example SERVFAIL NOPE\n}',
     "Corefile:2:36: rewrite: expected an RCODE (a name such as NXDOMAIN, or 0 to 23) after 'rewrite rcode a.example SERVFAIL', found 'NOPE'"),
    ('.:53 {\n  rewrite rcode fuzzy a.example 2 3\n}',
     "Corefile:2:17: rewrite: expected a match type (exact, prefix, suffix, substring, regex) after 'rewrite rcode', found 'fuzzy'"),
    ('.:53 {\n  rewrite rcode exact a.example 2 3 4\n}',
     "Corefile:2:37: rewrite: expected end of line after 'rewrite rcode exact a.example 2 3', found '4'"),
    ('.:53 {\n  rewrite name fuzzy a b\n}',
     "Corefile:2:16: rewrite: expected a match type (exact, prefix, suffix, substring, regex) after 'rewrite name', found 'fuzzy'"),
    ('.:53 {\n  rewrite name regex (unclosed x\n}',
     "Corefile:2:22: rewrite: expected a regex, found '(unclosed' (missing ), unterminated subpattern at position 0)"),
    ('.:53 {\n  rewrite name exact a b answer\n}',
     "Corefile:2:26: rewrite: expected 'auto', 'name' or 'value' after 'rewrite name exact a b answer', found end of line"),
    ('.:53 {\n  rewrite name exact a b answer foo x y\n}',
     "Corefile:2:33: rewrite: expected 'auto', 'name' or 'value' after 'rewrite name exact a b answer', found 'foo'"),
    ('.:53 {\n  rewrite name regex (a) b answer name\n}',
     "Corefile:2:35: rewrite: expected a FROM regex after 'rewrite name regex (a) b answer name', found end of line"),
    ('.:53 {\n  rewrite name regex (a) b answer auto answer name x y\n}',
     "Corefile:2:52: rewrite: 'answer auto' cannot be combined with 'answer name'"),
    ('.:53 {\n  rewrite name regex (a) b extra\n}',
     "Corefile:2:28: rewrite: expected 'answer' after 'rewrite name regex (a) b', found 'extra'"),
    ('.:53 {\n  rewrite type A\n}',
     "Corefile:2:16: rewrite: expected a TYPE after 'rewrite type A', found end of line"),
    ('.:53 {\n  rewrite type A BOGUS\n}',
     "Corefile:2:18: rewrite: expected a TYPE after 'rewrite type A', found 'BOGUS'"),
    ('.:53 {\n  rewrite type A AAAA MX\n}',
     "Corefile:2:23: rewrite: expected end of line after 'rewrite type A AAAA', found 'MX'"),
    ('.:53 {\n  rewrite class IN XX\n}',
     "Corefile:2:20: rewrite: expected a CLASS after 'rewrite class IN', found 'XX'"),
    ('.:53 {\n  rewrite ttl a.example.\n}',
     "Corefile:2:15: rewrite: expected a TTL after 'rewrite ttl a.example.', found end of line"),
    ('.:53 {\n  rewrite ttl a.example. 5-2\n}',
     "Corefile:2:26: rewrite: expected a TTL (SECONDS, MIN-MAX, MIN- or -MAX) after 'rewrite ttl a.example.', found '5-2'"),
    ('.:53 {\n  rewrite ttl a.example. -\n}',
     "Corefile:2:26: rewrite: expected a TTL (SECONDS, MIN-MAX, MIN- or -MAX) after 'rewrite ttl a.example.', found '-'"),
    ('.:53 {\n  rewrite ttl fuzzy a.example. 5\n}',
     "Corefile:2:15: rewrite: expected a match type (exact, prefix, suffix, substring, regex) after 'rewrite ttl', found 'fuzzy'"),
    ('.:53 {\n  rewrite ttl exact a.example. 5 6\n}',
     "Corefile:2:34: rewrite: expected end of line after 'rewrite ttl exact a.example. 5', found '6'"),
    ('.:53 {\n  dns64 10.0.0.0/8\n}',
     "Corefile:2:9: dns64: expected an IPv6 PREFIX of length 32, 40, 48, 56, 64 or 96 (RFC 6052 section 2.2) after 'dns64', found '10.0.0.0/8' (the prefix must be IPv6)"),
    ('.:53 {\n  dns64 64:ff9b::/80\n}',
     "Corefile:2:9: dns64: expected an IPv6 PREFIX of length 32, 40, 48, 56, 64 or 96 (RFC 6052 section 2.2) after 'dns64', found '64:ff9b::/80' (a /80 prefix cannot embed IPv4 addresses)"),
    ('.:53 {\n  dns64 nonsense\n}',
     "Corefile:2:9: dns64: expected an IPv6 PREFIX of length 32, 40, 48, 56, 64 or 96 (RFC 6052 section 2.2) after 'dns64', found 'nonsense' ('nonsense' is not an IP network)"),
    ('.:53 {\n  dns64 64:ff9b::/96 extra\n}',
     "Corefile:2:22: dns64: expected end of line after 'dns64 64:ff9b::/96', found 'extra'"),
    ('.:53 {\n  dns64 {\n    prefix\n  }\n}',
     "Corefile:3:5: dns64: expected an IPv6 PREFIX of length 32, 40, 48, 56, 64 or 96 (RFC 6052 section 2.2) after 'prefix', found end of line"),
    ('.:53 {\n  dns64 {\n    translate_all yes\n  }\n}',
     "Corefile:3:19: dns64: expected end of line after 'translate_all', found 'yes'"),
    ('.:53 {\n  dns64 {\n    bogus\n  }\n}',
     "Corefile:3:5: dns64: expected an option (prefix, translate_all, allow_ipv4), found 'bogus'"),
    ('.:53 {\n  dns64\n  dns64\n}',
     'Corefile:3:3: dns64: plugin used twice in one server block (first at Corefile:2:3)'),
    ('.:53 {\n  whoami extra\n}',
     "Corefile:2:10: whoami: expected end of line after 'whoami', found 'extra'"),
    ('.:53 {\n  whoami {\n  }\n}',
     "Corefile:2:10: whoami: expected end of line after 'whoami', found '{' ('whoami' takes no options block)"),
]


@pytest.mark.parametrize(("text", "expected"), CASES)
def test_error(text: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_text(text, path="Corefile", env={})
    assert str(info.value) == expected


@pytest.mark.parametrize("text", [
    # Several template and rewrite lines in one block are allowed (and kept in order).
    ".:53 {\n  template IN A a.example {\n    rcode NXDOMAIN\n  }\n  template IN AAAA . {\n    rcode NOERROR\n  }\n}",
    ".:53 {\n  rewrite continue name a.example b.example\n  rewrite name b.example c.example\n}",
    # ederror with and without EXTRA-TEXT; rcode, ederror, fallthrough given twice: the
    # last counts (as in CoreDNS).
    '.:53 {\n  template IN A {\n    rcode NXDOMAIN\n    rcode REFUSED\n    fallthrough a.example\n    fallthrough\n  }\n}',
    '.:53 {\n  template IN A {\n    ederror 15\n  }\n  template IN TXT {\n    ederror 18 "blocked"\n    ederror 17\n  }\n}',
    # edns0 forms node-cache takes: Go's base-0 codes, revert, metadata labels.
    ".:53 {\n  rewrite edns0 local set 0755 abc revert\n  rewrite edns0 local set 0xFFEE {x/y}\n"
    "  rewrite edns0 subnet set 24 56 revert\n  rewrite edns0 nsid unset\n}",
    # CoreDNS's block form of a rule.
    ".:53 {\n  rewrite stop {\n    name regex (.*)[.]corp[.]$ {1}.example\n    answer auto\n  }\n}",
    # Inline hosts entries mixed with options, fallthrough last.
    ".:53 {\n  hosts /etc/hosts example.org {\n    10.0.0.1 a.example.org\n    ttl 60\n    fd00::1 a.example.org b.example.org\n    no_reverse\n    reload 0s\n    fallthrough\n  }\n}",
    ".:53 {\n  dns64 64:ff9b::/96\n}",
    ".:53 {\n  dns64 {\n    prefix 2001:db8::/32\n    translate_all\n    allow_ipv4\n  }\n  whoami\n}",
])
def test_accepted(text: str) -> None:
    parse_text(text, path="Corefile", env={})


def test_repeated_lines_keep_their_order() -> None:
    block = parse_text(".:53 {\n  template IN A a.example\n  template IN AAAA b.example\n"
                       "  rewrite name a.x b.x\n  rewrite name c.x d.x\n}").blocks[0]
    assert [t.qtype for t in block.template] == [1, 28]
    assert [r.source for r in block.rewrite] == ["a.x.", "c.x."]  # type: ignore[union-attr]


def test_check_config_lists_the_answering_plugins_in_running_order() -> None:
    from nodecache.config.describe import describe
    text = describe(parse_text(".:53 {\n  whoami\n  hosts /etc/hosts {\n    10.0.0.1 a.example\n"
                               "    fallthrough\n  }\n  template IN AAAA . {\n    rcode NOERROR\n  }\n"
                               "  rewrite name a.x b.x\n  dns64\n}\n"))
    labels = [line.split()[0] for line in text.splitlines()
              if line.startswith("  ") and not line.startswith("   ") and line.split()]
    order = [label for label in labels if label in ("dns64", "rewrite", "template", "hosts",
                                                    "forward", "whoami")]
    assert order == ["dns64", "rewrite", "template", "hosts", "forward", "whoami"]
    assert "IN AAAA . -> NOERROR, 0 answer(s)" in text
    assert "1 inline entries, zones ., TTL 3600s, fallthrough ." in text
    assert "off (what no plugin answers gets SERVFAIL)" in text
