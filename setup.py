"""The package build: the hot modules compiled with mypyc where that can be done.

Everything else is in setup.cfg. mypyc turns the modules in :data:`COMPILED`
into one C extension (``nodecache/compiled__mypyc``) plus a small extension per
module, each of which shadows its ``.py`` at import time (extensions come first
in Python's finder). That needs mypyc (pyproject.toml's build requirements), a C
compiler and the interpreter's headers (Python.h); without any of them, or with
``NODECACHE_MYPYC=0``, the build installs pure Python and says so once.
``NODECACHE_MYPYC=1`` fails the build instead (the image's build does that).
The ``.py`` files ship either way: ``NODECACHE_PURE=1`` at run time imports them
instead (nodecache/build.py).
"""
from __future__ import annotations

import os
import shutil
import sys
import sysconfig

from setuptools import setup

#: The modules compiled, relative to the repository root: those where a query
#: spends its CPU, each measured in and out (docs/architecture.md, "Compiled build").
COMPILED = (
    "nodecache/core/wire.py",
    "nodecache/core/cache.py",
    "nodecache/core/handler.py",
    "nodecache/core/upstream.py",
    "nodecache/core/plan.py",
    "nodecache/core/stats.py",
    "nodecache/aio/forwarder.py",
    "nodecache/aio/resolver.py",
    # its query class subclasses the forwarder's: interpreted classes cannot
    # inherit from compiled ones
    "nodecache/aio/forwardchain.py",
)
#: The shared library's module; the per-module extensions load it.
GROUP = "nodecache.compiled"


def why_pure(environ: dict[str, str] | os._Environ[str] = os.environ) -> str | None:
    """Why this build cannot or must not compile; ``None`` when it compiles."""
    if environ.get("NODECACHE_MYPYC", "1") == "0":
        return "NODECACHE_MYPYC=0"
    try:
        import mypyc.build  # noqa: F401
    except ImportError:
        return "mypyc is not installed"
    compiler = (sysconfig.get_config_var("CC") or "cc").split()[0]
    if shutil.which(compiler) is None:
        return f"no C compiler ({compiler})"
    include = sysconfig.get_paths()["include"]
    if not os.path.isfile(os.path.join(include, "Python.h")):
        return f"no Python.h in {include} (Debian: python3-dev)"
    return None


def extensions() -> list[object]:
    reason = why_pure()
    if reason is not None and os.environ.get("NODECACHE_MYPYC") == "1":
        raise SystemExit(f"nodecache: NODECACHE_MYPYC=1, but cannot compile: {reason}")
    if reason is not None:
        print(f"nodecache: pure Python build ({reason})", file=sys.stderr)
        return []
    from mypyc.build import mypycify

    print(f"nodecache: compiling {len(COMPILED)} modules with mypyc", file=sys.stderr)
    return list(mypycify(list(COMPILED), opt_level="3", group_name=GROUP))


if __name__ == "__main__":
    setup(ext_modules=extensions())
