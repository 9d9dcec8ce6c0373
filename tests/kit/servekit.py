"""The serving process ``nodecache run`` becomes, for tests that start it their own way."""
from __future__ import annotations

import logging
import sys

from nodecache import cli, serve


def serving_argv(*run_args: str) -> list[str]:
    """The command line ``nodecache run run_args`` checks and replaces itself with
    (``python -m nodecache.serve OPTIONS``); nothing is started."""
    became: list[list[str]] = []

    def become(options: serve.ServeOptions) -> None:
        became.append(serve.argv(options))
        raise SystemExit(0)

    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)  # run sets logging up
    real, serve.become_server = serve.become_server, become
    try:
        cli.main(["run", *run_args])
    except SystemExit:
        pass
    finally:
        serve.become_server = real
        root.setLevel(level)
        root.handlers[:] = handlers
    [argv] = became
    assert argv[:3] == [sys.executable, "-m", "nodecache.serve"], argv
    return argv
