"""Snippets, ``import`` of files and globs, cycles, and errors inside imported files."""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest

from nodecache.config import (
    CacheSettings,
    ForwardSettings,
    HealthSettings,
    ServerBlock,
    Upstream,
    load,
    parse_text,
)
from nodecache.config.settings import ErrorsSettings
from nodecache.errors import ConfigError
from tests.kit import DATA

IMPORTS = DATA / "corefiles" / "imports"
ENV = {"DOMAIN": "cluster.local", "CLUSTER_DNS": "10.96.0.11", "LOCAL_DNS": "169.254.20.10",
       "UPSTREAMS": "8.8.8.8 8.8.4.4"}


def write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_fixture_with_snippets_globs_and_env() -> None:
    main = str(IMPORTS / "Corefile")
    config = load(main, env=ENV)
    common: dict[str, Any] = dict(port=53, errors=ErrorsSettings(), loop=True, prometheus=":9253")
    assert [b.zones for b in config.blocks] == [
        ("cluster.local.",), ("in-addr.arpa.", "ip6.arpa."), (".",)]
    cluster, reverse, root = config.blocks
    assert cluster == ServerBlock(
        zones=("cluster.local.",), **common, source=cluster.source,
        cache=CacheSettings(success_max_ttl=30, denial_max_ttl=5),
        forward=ForwardSettings(zone=".", upstreams=(Upstream("10.96.0.11"),), force_tcp=True),
        health=HealthSettings(address="169.254.20.10:8080"))
    assert reverse.forward == ForwardSettings(zone=".", upstreams=(Upstream("10.96.0.11"),))
    assert root.forward == ForwardSettings(
        zone=".", upstreams=(Upstream("8.8.8.8"), Upstream("8.8.4.4")))
    assert root.cache == CacheSettings(success_max_ttl=30, denial_max_ttl=30)
    # The blocks remember the file they came from.
    assert reverse.source is not None and reverse.source.file.endswith("10-reverse.conf")
    assert (reverse.source.line, reverse.source.column) == (1, 1)
    assert config.files == (
        main,
        str(IMPORTS / "snippets" / "cluster.snip"),
        str(IMPORTS / "conf.d" / "10-reverse.conf"),
        str(IMPORTS / "conf.d" / "20-root.conf"),
    )
    assert config.digest == hashlib.sha512((IMPORTS / "Corefile").read_bytes()).hexdigest()


def test_error_in_imported_file_names_that_file(tmp_path: Path) -> None:
    write(tmp_path, {"Corefile": ".:53 {\n  import opts/cache.conf\n}\n",
                     "opts/cache.conf": "# cache options\ncache {\n  success lots\n}\n"})
    with pytest.raises(ConfigError) as info:
        load(str(tmp_path / "Corefile"))
    assert str(info.value) == (f"{tmp_path}/opts/cache.conf:3:11: cache: expected a positive"
                               " integer CAPACITY after 'success', found 'lots'")


def test_env_in_imported_file(tmp_path: Path) -> None:
    write(tmp_path, {"Corefile": "import blocks.conf\n", "blocks.conf": ".:53 {\n  bind {$IP}\n}"})
    config = load(str(tmp_path / "Corefile"), env={"IP": "10.0.0.1"})
    assert config.blocks[0].bind == ("10.0.0.1",)
    with pytest.raises(ConfigError, match=r"blocks.conf:2:8: environment variable 'IP' is not set"):
        load(str(tmp_path / "Corefile"), env={})


def test_import_path_from_env(tmp_path: Path) -> None:
    write(tmp_path, {"extra/blocks.conf": ".:53 {\n  errors\n}"})
    config = parse_text("import {$DIR}/*.conf\n", path=str(tmp_path / "Corefile"),
                        env={"DIR": "extra"})
    assert config.blocks[0].errors


def test_import_inside_plugin_block(tmp_path: Path) -> None:
    write(tmp_path, {"Corefile": "(tcp) {\n  force_tcp\n  max_fails 5\n}\n"
                                 ".:53 {\n  forward . 10.0.0.1 {\n    import tcp\n  }\n"
                                 "  cache {\n    import cache-opts.conf\n  }\n}",
                     "cache-opts.conf": "keepttl\nservfail 0\n"})
    (block,) = load(str(tmp_path / "Corefile")).blocks
    assert block.forward is not None and block.forward.force_tcp and block.forward.max_fails == 5
    assert block.cache == CacheSettings(keepttl=True, servfail_ttl=0)


def test_one_line_snippet_and_snippet_importing_snippet() -> None:
    config = parse_text("(a) { errors }\n(b) {\n  import a\n  loop\n}\n.:53 {\n  import b\n}")
    assert config.blocks[0].errors and config.blocks[0].loop


def test_snippet_imports_files_relative_to_its_own_file(tmp_path: Path) -> None:
    write(tmp_path, {"Corefile": "import snip/defs\n.:53 {\n  import s\n}",
                     "snip/defs": "(s) {\n  import part\n}", "snip/part": "errors\n"})
    assert load(str(tmp_path / "Corefile")).blocks[0].errors


def test_snippet_must_be_defined_before_use(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"Corefile:2:10: import: no snippet named 's'"):
        parse_text(".:53 {\n  import s\n}\n(s) {\n  errors\n}", path=str(tmp_path / "Corefile"))


def test_glob_matching_nothing_imports_nothing(tmp_path: Path) -> None:
    config = parse_text("import conf.d/*.conf\n.:53 {\n}", path=str(tmp_path / "Corefile"))
    assert len(config.blocks) == 1


def test_glob_skips_directories_and_sorts(tmp_path: Path) -> None:
    write(tmp_path, {"d/b.conf": "b.org {\n}", "d/a.conf": "a.org {\n}",
                     "d/c.conf/inner": "not read"})
    config = parse_text("import d/*\n", path=str(tmp_path / "Corefile"))
    assert [b.zones for b in config.blocks] == [("a.org.",), ("b.org.",)]


def test_absolute_import(tmp_path: Path) -> None:
    write(tmp_path, {"abs.conf": ".:53 {\n}"})
    config = parse_text(f"import {tmp_path / 'abs.conf'}\n")
    assert config.files == (str(tmp_path / "abs.conf"),)


def test_file_import_cycle(tmp_path: Path) -> None:
    write(tmp_path, {"Corefile": "import a.conf\n", "a.conf": "import b.conf\n",
                     "b.conf": "\n  import a.conf\n"})
    with pytest.raises(ConfigError) as info:
        load(str(tmp_path / "Corefile"))
    root = str(tmp_path)
    assert str(info.value) == (f"{root}/b.conf:2:10: import: file cycle {root}/Corefile ->"
                               f" {root}/a.conf -> {root}/b.conf -> {root}/a.conf")


def test_file_importing_itself_by_glob(tmp_path: Path) -> None:
    write(tmp_path, {"Corefile": ".:53 {\n}\nimport *\n"})
    with pytest.raises(ConfigError, match=r"Corefile:3:8: import: file cycle"):
        load(str(tmp_path / "Corefile"))


def test_importing_the_same_file_twice_is_not_a_cycle(tmp_path: Path) -> None:
    write(tmp_path, {"Corefile": "a.org {\n  import opts\n}\nb.org {\n  import opts\n}",
                     "opts": "errors\n"})
    config = load(str(tmp_path / "Corefile"))
    assert all(b.errors for b in config.blocks)
    assert config.files == (str(tmp_path / "Corefile"), str(tmp_path / "opts"))


def test_missing_import(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        parse_text("\nimport nope.conf", path=str(tmp_path / "Corefile"))
    assert str(info.value) == (f"{tmp_path}/Corefile:2:8: import: no snippet named 'nope.conf'"
                               f" and no file '{tmp_path}/nope.conf'")


def test_import_of_undecodable_file(tmp_path: Path) -> None:
    (tmp_path / "bad.conf").write_bytes(b"\xff\xfe")
    with pytest.raises(ConfigError, match=r"Corefile:1:8: import: cannot read .*bad.conf"):
        parse_text("import bad.conf", path=str(tmp_path / "Corefile"))


def test_load_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^.*/nope: cannot read the Corefile: "):
        load(str(tmp_path / "nope"))


def test_load_invalid_utf8_names_the_byte(tmp_path: Path) -> None:
    # The column counts characters: the two-byte 'é' is one.
    (tmp_path / "Corefile").write_bytes(b".:53 {\n  log " + "é".encode() + b"\xff\n}\n")
    with pytest.raises(ConfigError) as info:
        load(str(tmp_path / "Corefile"))
    assert (info.value.line, info.value.column) == (2, 8)


def test_load_skips_bom(tmp_path: Path) -> None:
    (tmp_path / "Corefile").write_bytes(b"\xef\xbb\xbf.:53 {\n}\n")
    config = load(str(tmp_path / "Corefile"))
    assert config.blocks[0].zones == (".",)
    assert config.blocks[0].source is not None and config.blocks[0].source.column == 1


def test_resolv_conf_errors_point_into_that_file(tmp_path: Path) -> None:
    write(tmp_path, {"bad.conf": "search x\nnameserver  not-an-ip\n", "empty.conf": "# none\n"})
    corefile = str(tmp_path / "Corefile")
    with pytest.raises(ConfigError) as info:
        parse_text(".:53 {\n  forward . bad.conf\n}", path=corefile)
    assert str(info.value) == (f"{tmp_path}/bad.conf:2:13: expected an IP address after"
                               " 'nameserver', found 'not-an-ip'")
    with pytest.raises(ConfigError) as info:
        parse_text(".:53 {\n  forward . empty.conf\n}", path=corefile)
    assert str(info.value) == (f"{corefile}:2:13: forward: no 'nameserver' line in"
                               f" '{tmp_path}/empty.conf'")


def test_resolv_conf_counts_towards_the_upstream_limit(tmp_path: Path) -> None:
    write(tmp_path, {"r.conf": "".join(f"nameserver 10.0.0.{i}\n" for i in range(10))})
    with pytest.raises(ConfigError, match=r"Corefile:2:20: forward: at most 15 upstreams are"
                                          r" allowed, found 20 with 'r.conf'"):
        parse_text(".:53 {\n  forward . r.conf r.conf\n}", path=str(tmp_path / "Corefile"))


def test_deep_snippet_nesting_is_refused() -> None:
    text = "".join(f"(s{i}) {{\n  import s{i - 1}\n}}\n" for i in range(1, 40))
    with pytest.raises(ConfigError, match=r"import: imports nested more than 32 deep"):
        parse_text("(s0) {\n  errors\n}\n" + text + ".:53 {\n  import s39\n}")


def test_exponential_snippets_are_refused() -> None:
    # Each snippet imports the previous one twice: 2**30 copies of 'errors'.
    text = "".join(f"(s{i}) {{\n  import s{i - 1}\n  import s{i - 1}\n}}\n" for i in range(1, 31))
    with pytest.raises(ConfigError, match=r"import: imports expand to more than 500000 tokens"):
        parse_text("(s0) {\n  errors\n}\n" + text + ".:53 {\n  import s30\n}")
