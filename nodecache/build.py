"""Which build runs: modules compiled by mypyc (setup.py) or pure Python.

A compiled module is an extension file beside its ``.py``; Python's finder
takes the extension first. ``NODECACHE_PURE=1`` puts a finder in front that
takes the ``.py`` instead, for every module of the package: the operator's way
back to pure Python without another image, and the tests' pure run.
"""
from __future__ import annotations

import importlib.machinery
import os
import sys

# The supervisor imports this with NODECACHE_PURE set, and holds no typing, pathlib
# or collections (tests/system/test_failsafe.py): those only for mypy, or late.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from pathlib import Path
    from types import ModuleType

PURE_ENV = "NODECACHE_PURE"
PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))


def pure_requested(environ: Mapping[str, str] = os.environ) -> bool:
    return environ.get(PURE_ENV, "") not in ("", "0")


class SourcesFirst:
    """A meta path finder that loads ``nodecache.*`` modules from their ``.py``."""

    def find_spec(self, name: str, path: Sequence[str] | None,
                  target: ModuleType | None = None) -> importlib.machinery.ModuleSpec | None:
        if not name.startswith("nodecache.") or path is None:
            return None
        leaf = name.rpartition(".")[2] + ".py"
        for entry in path:
            source = os.path.join(entry, leaf)
            if os.path.isfile(source):
                loader = importlib.machinery.SourceFileLoader(name, source)
                spec = importlib.machinery.ModuleSpec(name, loader, origin=source)
                spec.has_location = True  # __file__ is set, bytecode cached as usual
                return spec
        return None  # a package, or not ours: the ordinary finders decide


def prefer_sources() -> None:
    """Import pure Python from here on (modules imported already stay as they are)."""
    if not any(isinstance(f, SourcesFirst) for f in sys.meta_path):
        sys.meta_path.insert(0, SourcesFirst())


def _module_name(source: Path, root: Path) -> str:
    return ".".join(source.relative_to(root.parent).with_suffix("").parts)


def extensions(root: Path | str = PACKAGE_DIR) -> dict[str, tuple[Path, Path]]:
    """``{module: (extension, source)}`` for each module with an extension beside its ``.py``.

    The library all of them load (``compiled__mypyc``) has no ``.py`` and is not listed.
    """
    from pathlib import Path  # noqa: PLC0415

    root = Path(root)
    found = {}
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        for ext in root.rglob("*" + suffix):
            source = ext.with_name(ext.name[:-len(suffix)] + ".py")
            if source.is_file():
                found[_module_name(source, root)] = (ext, source)
    return dict(sorted(found.items()))


def stale(root: Path | str = PACKAGE_DIR) -> list[str]:
    """Compiled modules whose ``.py`` changed after they were built: they would shadow the edit."""
    return [name for name, (ext, source) in extensions(root).items()
            if source.stat().st_mtime > ext.stat().st_mtime]


def describe(root: Path | str = PACKAGE_DIR, environ: Mapping[str, str] = os.environ) -> str:
    """One line for the start-up log and ``--version``."""
    names = [n.removeprefix("nodecache.") for n in extensions(root)]
    if not names:
        return "pure Python"
    if pure_requested(environ):
        return f"pure Python ({PURE_ENV} is set; {len(names)} compiled modules not used)"
    return f"compiled with mypyc: {', '.join(names)}"
