"""The image, built with podman from this repository, run offline.

The rehearsals (the image in a node's network namespace, as the DaemonSet runs
it) are in tests/system/test_image_node.py; both use the session's one build.
"""
from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from nodecache.hostnet.linkctl import CHILD_ARGV
from tests.kit.podman import ROOT, Podman, base_images, qualify

pytestmark = pytest.mark.privileged

Image = tuple[Podman, str]


def _run(image: Image, *args: str, user: str | None = None, entrypoint: str | None = None,
         check: bool = True) -> subprocess.CompletedProcess[str]:
    pm, tag = image
    opts = ["--rm", "--network=none", "-v", f"{ROOT / 'Corefile.nodelocal'}:/t/Corefile:ro"]
    if user:
        opts += ["--user", user]
    if entrypoint:
        opts += ["--entrypoint", entrypoint]
    return pm.run("run", *opts, tag, *args, check=check)


def test_qualify_and_base_images() -> None:
    assert qualify("debian:bookworm-slim") == "docker.io/library/debian:bookworm-slim"
    assert qualify("quay.io/x/y") == "quay.io/x/y:latest"
    assert qualify("me/y:1") == "docker.io/me/y:1"
    assert base_images() == ["docker.io/library/debian:bookworm-slim"]


def test_commands_and_node_cache_flags_both_work(image: Image) -> None:
    # A command after the image name...
    out = _run(image, "check-config", "/t/Corefile", check=False)
    assert out.returncode == 1
    assert "/t/Corefile:20:10: bind: expected an IP ADDRESS" in out.stderr, out.stderr
    assert "unexpected extra argument" not in out.stderr
    assert "Usage: nodecache [OPTIONS] COMMAND" in _run(image, "--help").stdout
    # ... or node-cache's bare flags, which mean `run`.
    out = _run(image, "-localip", "127.0.0.1", "-conf", "/t/missing", "--dry-run", check=False)
    assert out.returncode == 1 and "/t/missing" in out.stderr, out.stderr


def test_root_by_default_and_an_unprivileged_user_with_its_own_group(image: Image) -> None:
    assert _run(image, "-u", entrypoint="id").stdout.strip() == "0"
    assert _run(image, user="nodecache", entrypoint="id").stdout.strip() == \
        "uid=65532(nodecache) gid=65532(nodecache) groups=65532(nodecache)"
    # Offline checks work unprivileged.
    out = _run(image, "--version", user="nodecache")
    assert out.stdout.startswith("nodecache, version"), out.stdout
    out = _run(image, "check-config", "/t/Corefile", user="nodecache", check=False)
    assert "/t/Corefile:20:10:" in out.stderr, out.stderr


def test_only_the_venv_comes_over(image: Image) -> None:
    pm, tag = image
    script = ("set -e; test ! -e /src; test ! -e /opt/build; "
              "test ! -e /opt/nodecache/bin/pip; "
              # (`! cmd` never stops `set -e`: each check is a test)
              "test -z \"$(ls /opt/nodecache/lib/python3.11/site-packages | grep -E '^(pip|setuptools|wheel)')\"; "
              "/opt/nodecache/bin/python -c 'import uvloop, pyroute2, dns, prometheus_client'; "
              "test -f /opt/nodecache/share/nodecache/Corefile.nodelocal; "
              "iptables-legacy --version; iptables-nft --version; nft --version; ip -V; "
              # the compiler and the headers stayed in the build stage
              "test -z \"$(command -v gcc cc)\"; test ! -e /usr/include/python3.11/Python.h; "
              # the build's CA bundle (a secret) is not in the image; nor is any bundle
              "test ! -e /etc/ssl/certs/ca-certificates.crt")
    out = _run(image, "-c", script, entrypoint="sh", check=False)
    assert out.returncode == 0, out.stdout + out.stderr
    # No layer holds the sources: each layer's files are listed by `podman history`.
    history = pm.run("history", "--no-trunc", "--format", "{{.CreatedBy}}", tag).stdout
    assert "COPY dir:" in history  # the venv
    assert "pyproject.toml" not in history and "/src" not in history, history


def test_the_image_runs_the_compiled_modules_and_can_run_pure(image: Image) -> None:
    compiled = [m.removesuffix(".py").replace("/", ".").removeprefix("nodecache.")
                for m in re.findall(r'"(nodecache/[a-z_/]+\.py)"', (ROOT / "setup.py").read_text())]
    out = _run(image, "--version").stdout
    assert f"build: compiled with mypyc: {', '.join(sorted(compiled))}\n" in out, out
    code = "import nodecache.core.handler as h; print(h.__file__)"
    where = _run(image, "-c", code, entrypoint="/opt/nodecache/bin/python").stdout.strip()
    assert where.startswith("/opt/nodecache/") and where.endswith("-linux-gnu.so"), where
    # The operator's way back: the same image, pure Python.
    pm, tag = image
    pure = pm.run("run", "--rm", "--network=none", "-e", "NODECACHE_PURE=1", tag, "--version").stdout
    assert "build: pure Python (NODECACHE_PURE is set" in pure, pure
    where = pm.run("run", "--rm", "--network=none", "-e", "NODECACHE_PURE=1",
                   "--entrypoint", "/opt/nodecache/bin/python", tag, "-c", code).stdout.strip()
    assert where.endswith("/nodecache/core/handler.py"), where


def test_versions_pinned_in_the_lock_are_installed(image: Image) -> None:
    pinned = {}
    for line in (ROOT / "requirements" / "image.txt").read_text().splitlines():
        if "==" in line and not line.startswith((" ", "#")):
            name, _, version = line.split(" ")[0].partition("==")
            pinned[name.lower()] = version
    code = ("import importlib.metadata as m, json; print(json.dumps({"
            "d.metadata['Name'].lower().replace('_', '-'): d.version "
            "for d in m.distributions()}))")
    out = _run(image, "-c", code, entrypoint="/opt/nodecache/bin/python")
    installed = json.loads(out.stdout)
    assert {k: installed.get(k) for k in pinned} == pinned
    assert set(installed) == set(pinned) | {"nodecache"}


def test_link_helper_starts_without_runpy_warning() -> None:
    # The helper runs once per sync interval; a warning there is logged by every pod.
    out = subprocess.run([sys.executable, "-W", "error", *CHILD_ARGV], input='{"op": "nope"}',
                         capture_output=True, text=True, timeout=60, check=False)
    assert "RuntimeWarning" not in out.stderr, out.stderr
    assert "unknown operation 'nope'" in out.stderr
