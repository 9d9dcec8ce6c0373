"""The kube-dns ConfigMap: parsing, validation, and the directory watcher."""
from __future__ import annotations

import os
import pathlib
from collections.abc import Mapping

import pytest

from nodecache.errors import ConfigError
from nodecache.k8s.kubedns import (
    DirectoryWatcher,
    KubeDNSConfig,
    KubeDNSConfigError,
    StubDomain,
    directory_version,
    kubedns_dir,
    parse_files,
    parse_server,
    read_config_dir,
)

SERVERS = [
    ("10.0.0.1", "10.0.0.1"),
    ("10.0.0.1:5353", "10.0.0.1:5353"),
    (" dns://10.0.0.1:53 ", "10.0.0.1:53"),
    ("fd00::1", "fd00::1"),
    ("[fd00::1]", "fd00::1"),
    ("[fd00:0::1]:5353", "[fd00::1]:5353"),
]


@pytest.mark.parametrize("text,expected", SERVERS)
def test_parse_server(text: str, expected: str) -> None:
    assert parse_server(text) == expected


@pytest.mark.parametrize("text", ["", "ns.example", "10.0.0.1:", "10.0.0.1:0", "10.0.0.1:65536",
                                  "[fd00::1", "[fd00::1]x", "tls://10.0.0.1", "10.0.0.256"])
def test_parse_server_rejects(text: str) -> None:
    with pytest.raises(KubeDNSConfigError):
        parse_server(text)


PARSE_CASES = [
    ("empty", {}, KubeDNSConfig()),
    ("blank-values", {"stubDomains": " \n", "upstreamNameservers": ""}, KubeDNSConfig()),
    ("stub-domains-sorted-and-normalised",
     {"stubDomains": '{"b.example": ["10.0.0.2"], "A.Example.": ["10.0.0.1", "10.0.0.3:5353"]}'},
     KubeDNSConfig(stub_domains=(StubDomain("a.example", ("10.0.0.1", "10.0.0.3:5353")),
                                 StubDomain("b.example", ("10.0.0.2",))))),
    ("upstreams", {"upstreamNameservers": '["8.8.8.8", "8.8.4.4", "[2001:4860:4860::8888]:53"]'},
     KubeDNSConfig(upstream_nameservers=("8.8.8.8", "8.8.4.4", "[2001:4860:4860::8888]:53"))),
    ("other-keys-ignored", {"federations": '{"x": "y"}', "whatever": "not json"}, KubeDNSConfig()),
]


@pytest.mark.parametrize("files,expected", [c[1:] for c in PARSE_CASES], ids=[c[0] for c in PARSE_CASES])
def test_parse_files(files: dict[str, str], expected: KubeDNSConfig) -> None:
    assert parse_files(files) == expected


PARSE_ERRORS = [
    ("stub-json", {"stubDomains": "{not json"}, "invalid JSON"),
    ("stub-not-object", {"stubDomains": '["10.0.0.1"]'}, "JSON object"),
    ("stub-empty-list", {"stubDomains": '{"a.example": []}'}, "non-empty list"),
    ("stub-bad-server", {"stubDomains": '{"a.example": ["ns.a.example"]}'}, "not IP"),
    ("stub-bad-domain", {"stubDomains": '{"bad..domain": ["10.0.0.1"]}'}, "not a domain"),
    ("stub-duplicate", {"stubDomains": '{"a.example": ["10.0.0.1"], "A.example.": ["10.0.0.2"]}'}, "twice"),
    ("upstreams-not-list", {"upstreamNameservers": '"8.8.8.8"'}, "JSON list"),
    ("upstreams-too-many", {"upstreamNameservers": '["1.1.1.1", "1.0.0.1", "8.8.8.8", "8.8.4.4"]'},
     "at most 3"),
    ("upstreams-bad", {"upstreamNameservers": '["dns.google"]'}, "not IP"),
]


@pytest.mark.parametrize("files,message", [c[1:] for c in PARSE_ERRORS], ids=[c[0] for c in PARSE_ERRORS])
def test_parse_files_errors(files: dict[str, str], message: str) -> None:
    with pytest.raises(KubeDNSConfigError, match=message) as info:
        parse_files(files)
    assert isinstance(info.value, ConfigError) and info.value.errortype == "configmap"


def _mount_configmap(path: pathlib.Path, data: Mapping[str, str], generation: int) -> None:
    """Lay out a directory the way the kubelet mounts a ConfigMap (..data symlink swap)."""
    path.mkdir(exist_ok=True)
    target = path / f"..2026_01_01_00_00_{generation:02d}.000000000"
    target.mkdir()
    for key, value in data.items():
        (target / key).write_text(value)
    tmp = path / "..data_tmp"
    tmp.symlink_to(target.name)
    os.replace(tmp, path / "..data")
    for key in data:
        link = path / key
        if not link.is_symlink():
            link.symlink_to(f"..data/{key}")
    for key in os.listdir(path):
        if not key.startswith(".") and key not in data:
            (path / key).unlink()


def test_read_config_dir_follows_kubelet_layout(tmp_path: pathlib.Path) -> None:
    cm = tmp_path / "kube-dns"
    _mount_configmap(cm, {"stubDomains": "{}", "upstreamNameservers": "[]"}, 1)
    (cm / "subdir").mkdir()
    assert read_config_dir(str(cm)) == {"stubDomains": b"{}", "upstreamNameservers": b"[]"}
    assert read_config_dir(str(tmp_path / "absent")) == {}


def test_directory_version() -> None:
    assert directory_version({"a": b"1", "b": b"2"}) == directory_version({"b": b"2", "a": b"1"})
    assert directory_version({"a": b"12"}) != directory_version({"a1": b"2"})
    assert directory_version({}) != directory_version({"a": b""})


def test_watcher_reports_changes_only(tmp_path: pathlib.Path) -> None:
    cm = tmp_path / "kube-dns"
    watcher = DirectoryWatcher(str(cm), period=1.0)
    assert watcher.poll() == KubeDNSConfig()  # the first poll always reports, even with no ConfigMap
    assert watcher.poll() is None

    _mount_configmap(cm, {"stubDomains": '{"a.example": ["10.0.0.1"]}'}, 1)
    first = watcher.poll()
    assert first is not None and first.stub_domains == (StubDomain("a.example", ("10.0.0.1",)),)
    assert first.version == directory_version({"stubDomains": b'{"a.example": ["10.0.0.1"]}'})
    assert watcher.poll() is None

    # Invalid content: reported once, the last good config stays current.
    _mount_configmap(cm, {"stubDomains": '{"a.example": ["bogus"]}'}, 2)
    with pytest.raises(KubeDNSConfigError, match="kube-dns: stubDomains"):
        watcher.poll()
    assert watcher.poll() is None
    assert watcher.current == first

    # Fixed again: reported.
    _mount_configmap(cm, {"stubDomains": '{"a.example": ["10.0.0.2"]}', "upstreamNameservers": '["1.1.1.1"]'}, 3)
    fixed = watcher.poll()
    assert fixed is not None and fixed.upstream_nameservers == ("1.1.1.1",)
    assert watcher.current == fixed

    # A change that parses to the same config (an ignored key) is not reported.
    _mount_configmap(cm, {"stubDomains": '{"a.example": ["10.0.0.2"]}', "upstreamNameservers": '["1.1.1.1"]',
                          "federations": "{}"}, 4)
    assert watcher.poll() is None


def test_watcher_with_injected_reader() -> None:
    contents: dict[str, bytes] = {"upstreamNameservers": b'["8.8.8.8"]'}
    watcher = DirectoryWatcher("/nowhere", read=lambda path: dict(contents))
    assert watcher.period == 10.0
    config = watcher.poll()
    assert config is not None and config.upstream_nameservers == ("8.8.8.8",)
    contents["upstreamNameservers"] = b"\xff\xfe"
    with pytest.raises(KubeDNSConfigError, match="UTF-8"):
        watcher.poll()

    def unreadable(path: str) -> dict[str, bytes]:
        raise PermissionError(13, "Permission denied")

    with pytest.raises(KubeDNSConfigError, match="cannot read"):
        DirectoryWatcher("/nowhere", read=unreadable).poll()


def test_kubedns_dir() -> None:
    assert kubedns_dir("/custom", isdir=lambda p: False) == "/custom"
    assert kubedns_dir("", isdir=lambda p: p == "/etc/kube-dns") == "/etc/kube-dns"
    assert kubedns_dir("", isdir=lambda p: False) is None
