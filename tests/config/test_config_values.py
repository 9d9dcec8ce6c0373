"""Domain names in Corefile arguments: checked without dnspython unless they need it."""
from __future__ import annotations

import dns.exception
import dns.name
import pytest

from nodecache.config import values


def dnspython(text: str) -> str:
    try:
        return dns.name.from_text(text, origin=dns.name.root).to_text().lower()
    except dns.exception.DNSException as exc:
        return f"error: {exc}"
    except UnicodeError:
        return "error: not a valid domain name"


def ours(text: str) -> str:
    try:
        return values.domain_name(text)
    except ValueError as exc:
        return f"error: {exc}"


@pytest.mark.parametrize("text", [
    "cluster.local", "Cluster.Local.", "a", "a.", "*.x", "_dns._udp.x", "in-addr.arpa",
    "-a", "a-", "a..b", ".a", "a" * 63 + ".b", "a" * 64 + ".b",
    ".".join(["a" * 63] * 3) + "." + "a" * 61, ".".join(["a" * 63] * 3) + "." + "a" * 62,
    ".".join(["a" * 63] * 4), "bücher.de", "a\\.b", "A\\065", "@", "a@b", "x/y"])
def test_domain_names_as_dnspython_reads_them(text: str) -> None:
    assert ours(text) == dnspython(text)


def test_zone_errors_stay_short() -> None:
    with pytest.raises(ValueError, match="^not a valid domain name$"):
        values.zone("a..b")
    assert values.zone("Cluster.Local") == ("cluster.local.",)
