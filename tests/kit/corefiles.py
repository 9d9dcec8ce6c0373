"""The Corefile most tests run: one server block, a cache, a forward, some plugins."""
from __future__ import annotations


def corefile(upstream: int | str, *plugins: str, cache: str = "cache 30",
             forward_options: str | None = None, server: str = ".") -> str:
    """``server { cache; forward . upstream; plugins }``, one directive a line.

    ``upstream`` is a port on 127.0.0.1, or the forward's destinations as text;
    ``forward_options=None`` writes no options block.
    """
    to = f"127.0.0.1:{upstream}" if isinstance(upstream, int) else upstream
    options = "" if forward_options is None else f" {{\n {forward_options}\n }}"
    lines = "".join(f" {plugin}\n" for plugin in plugins)
    return f"{server} {{\n {cache}\n forward . {to}{options}\n{lines}}}\n"
