"""The build: which modules setup.py compiles, which the tests import, and the way back to pure.

``make test`` runs the whole suite over the compiled modules and the unit tests
again with ``NODECACHE_PURE=1``; the assertions here check that each run tests
the build it says it tests.
"""
from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from nodecache import build
from tests.kit import ROOT

SUFFIX = importlib.machinery.EXTENSION_SUFFIXES[0]


def _setup_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("nodecache_setup", ROOT / "setup.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # setup() itself runs only as __main__
    return module


SETUP = _setup_module()
COMPILED = [p.removesuffix(".py").replace("/", ".") for p in SETUP.COMPILED]


def test_this_machine_compiles_and_the_switch_forces_pure(
        capsys: pytest.CaptureFixture[str]) -> None:
    # CI installs gcc and python3-dev (scripts/install-system-deps): it must compile.
    assert SETUP.why_pure({}) is None
    assert SETUP.why_pure({"NODECACHE_MYPYC": "0"}) == "NODECACHE_MYPYC=0"
    os.environ["NODECACHE_MYPYC"] = "0"
    try:
        assert SETUP.extensions() == []
    finally:
        del os.environ["NODECACHE_MYPYC"]
    assert capsys.readouterr().err == "nodecache: pure Python build (NODECACHE_MYPYC=0)\n"


def test_the_suite_runs_the_build_it_asks_for() -> None:
    files = {name: str(importlib.import_module(name).__file__) for name in COMPILED}
    if build.pure_requested():
        assert all(f.endswith(".py") for f in files.values()), files
    else:
        assert all(f.endswith(SUFFIX) for f in files.values()), \
            f"not compiled (make .venv/.installed builds them): {files}"
        assert sorted(build.extensions()) == sorted(COMPILED)


def _child(code: str, **env: str) -> str:
    environ = {k: v for k, v in os.environ.items() if k != build.PURE_ENV} | env
    return subprocess.run([sys.executable, "-c", code], env=environ, capture_output=True,
                          text=True, check=True, timeout=60).stdout


def test_pure_env_imports_the_sources_even_beside_extensions() -> None:
    code = ("import nodecache.core.handler as h, nodecache.core.wire as w; "
            "print(h.__file__); print(w.__file__)")
    assert all(f.endswith(SUFFIX) for f in _child(code).split())
    pure = _child(code, NODECACHE_PURE="1").split()
    assert pure == [str(ROOT / "nodecache/core/handler.py"), str(ROOT / "nodecache/core/wire.py")]
    # Modules never compiled load as always.
    assert _child("import nodecache.config.parser as p; print(p.__file__)",
                  NODECACHE_PURE="1").strip() == str(ROOT / "nodecache/config/parser.py")


def _touch(path: Path, mtime: float) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("")
    os.utime(path, (mtime, mtime))


def test_stale_extensions_and_the_description(tmp_path: Path) -> None:
    pkg = tmp_path / "nodecache"
    _touch(pkg / "core" / "wire.py", 100)
    _touch(pkg / "core" / f"wire{SUFFIX}", 200)
    _touch(pkg / "core" / "cache.py", 300)
    _touch(pkg / "core" / f"cache{SUFFIX}", 200)
    _touch(pkg / f"compiled__mypyc{SUFFIX}", 200)  # the shared library: no source
    _touch(pkg / "config" / "parser.py", 300)
    assert list(build.extensions(pkg)) == ["nodecache.core.cache", "nodecache.core.wire"]
    assert build.stale(pkg) == ["nodecache.core.cache"]
    assert build.describe(pkg, {}) == "compiled with mypyc: core.cache, core.wire"
    assert build.describe(pkg, {"NODECACHE_PURE": "1"}) == \
        "pure Python (NODECACHE_PURE is set; 2 compiled modules not used)"
    assert build.describe(pkg, {"NODECACHE_PURE": "0"}).startswith("compiled")
    assert build.describe(tmp_path / "none", {}) == "pure Python"


def test_the_pure_switch_costs_the_supervisor_no_libraries() -> None:
    # As the supervisor starts (no site, isolated): it imports nodecache, so the switch.
    code = ("import sys; sys.path.insert(0, sys.argv.pop(1)); import nodecache; "
            "held = ' '.join(sorted(sys.modules)); import nodecache.core.wire as w; "
            "print(w.__file__); print(held)")
    out = subprocess.run([sys.executable, "-I", "-S", "-B", "-c", code, str(ROOT)],
                         env={"NODECACHE_PURE": "1"}, capture_output=True, text=True,
                         timeout=60, check=True).stdout.splitlines()
    assert out[0] == str(ROOT / "nodecache/core/wire.py")
    assert "nodecache.build" in out[1].split()
    for heavy in ("typing", "collections", "pathlib", "importlib.util", "functools"):
        assert heavy not in out[1].split(), f"the switch imports {heavy}"


def test_every_module_imports_beside_the_compiled_ones() -> None:
    # A class of an interpreted module cannot subclass a compiled module's class
    # (mypyc's TypeError at import): every module is imported, in this run's build.
    code = ("import importlib, pkgutil, nodecache\n"
            "for m in pkgutil.walk_packages(nodecache.__path__, 'nodecache.'):\n"
            "    if not m.name.endswith('__main__'):\n"
            "        importlib.import_module(m.name)\n")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
