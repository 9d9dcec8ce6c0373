"""Template mode's source (``--basecorefile``), asked every 2 s: an unchanged rendering
is the Config already loaded, parsed once; a change is loaded; the written file stays ours."""
from __future__ import annotations

import pathlib

import pytest

from nodecache import config as corefile
from nodecache.configsource import TemplateSource
from nodecache.core.stats import AgentStats

BASE = """__PILLAR__DNS__DOMAIN__:53 {
    bind __PILLAR__LOCAL__DNS__
    cache 30
    forward . __PILLAR__CLUSTER__DNS__
}
.:53 {
    bind __PILLAR__LOCAL__DNS__
    forward . __PILLAR__UPSTREAM__SERVERS__
}
"""


def source(tmp_path: pathlib.Path) -> TemplateSource:
    (tmp_path / "base").write_text(BASE)
    (tmp_path / "resolv.conf").write_text("nameserver 192.0.2.53\n")
    return TemplateSource(basecorefile=str(tmp_path / "base"), conf=str(tmp_path / "Corefile"),
                          local_ips=["169.254.20.10"], dns_server_ips=[], upstreamsvc="kube-dns",
                          kubednscm=None, resolv_conf=str(tmp_path / "resolv.conf"),
                          domain="cluster.local", dns_port=53, stats=AgentStats(),
                          env={"KUBE_DNS_SERVICE_HOST": "10.96.0.10"})


def test_an_unchanged_rendering_is_not_parsed_again(tmp_path: pathlib.Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    parses: list[str] = []
    parse = corefile._parse

    def counted(text: str, **kwargs: object) -> object:
        parses.append(text)
        return parse(text, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(corefile, "_parse", counted)
    src = source(tmp_path)
    first = src()
    assert "forward . 10.96.0.10" in (tmp_path / "Corefile").read_text()
    assert len(parses) == 2  # the rendering, then the file written from it
    assert src() is first and src() is first
    assert len(parses) == 2
    # Someone edits the written file: it is put back, and the Config stays.
    (tmp_path / "Corefile").write_text("edited\n")
    assert src() is first
    assert (tmp_path / "Corefile").read_text() == src.render()
    # The node's resolvers change: a new rendering, loaded.
    (tmp_path / "resolv.conf").write_text("nameserver 192.0.2.54\n")
    second = src()
    assert second is not first and second.digest != first.digest
    assert "forward . 192.0.2.54" in (tmp_path / "Corefile").read_text()
    assert len(parses) == 4
