"""Podman for tests: the image built from this repository, containers run and removed.

Everything podman keeps (images, containers, its database, runtime state,
temporary files) lives under one temporary directory made here and removed at
the end, so a test run neither sees nor leaves any state in the host's podman.

* :class:`Podman` runs ``podman`` against that directory (``Podman.run``),
  with runc as the runtime (crun refuses the hybrid cgroup layout of this kind
  of machine) and ``nofile``/``nproc`` ulimits set in its containers.conf
  (the sandbox's own limits are too low for podman's defaults).
* :func:`session` makes the directory and the configuration, and at the end
  removes every container, unmounts what podman left mounted and deletes it.
* :func:`build_image` builds the repository's Dockerfile. Base images are not
  pulled: each ``FROM`` that names an outside image gets a stand-in made here
  from Debian packages (:data:`STAND_INS`, mmdebstrap), kept in the same
  directory for the rest of the run. The build uses the host's network
  (``--network=host``: Debian's mirror and PyPI) and hands pip the host's CA
  bundle as a build secret, never as a layer.

scripts/install-system-deps installs podman, runc and mmdebstrap.

A typical test::

    with podman.session() as pm:
        image = podman.build_image(pm)
        pm.run("run", "--rm", image, "--help")

``image`` (session-scoped) does the same once per test session; ``conftest.py``
makes it available to every test module.
"""
from __future__ import annotations

import contextlib
import json
import os
import pathlib
import re
import resource
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import pytest

from tests.kit import ROOT

DOCKERFILE = ROOT / "Dockerfile"
#: The image tag the tests build.
IMAGE = "localhost/nodecache:test"
#: The host's CA bundle: pip in the build reaches PyPI through a proxy only it trusts.
HOST_CA = pathlib.Path("/etc/ssl/certs/ca-certificates.crt")
#: Debian's mirror for the stand-in bases (the host's apt sources name the same one).
DEBIAN_MIRROR = "http://deb.debian.org/debian"


@dataclass(frozen=True)
class StandIn:
    """How to make a local stand-in for a base image that cannot be pulled."""

    #: Debian suite (``bookworm``).
    suite: str
    #: mmdebstrap variant; ``minbase`` is what Debian's ``-slim`` images hold.
    variant: str = "minbase"
    #: Extra packages, beyond the variant.
    include: tuple[str, ...] = ()


#: Base images the Dockerfile may name, by fully qualified reference.
STAND_INS: dict[str, StandIn] = {
    "docker.io/library/debian:bookworm-slim": StandIn("bookworm"),
}


def qualify(reference: str) -> str:
    """``debian:bookworm-slim`` -> ``docker.io/library/debian:bookworm-slim``; pure."""
    name, _, digest = reference.partition("@")
    first = name.split("/")[0]
    if "/" not in name:
        name = f"docker.io/library/{name}"
    elif "." not in first and ":" not in first and first != "localhost":
        name = f"docker.io/{name}"
    if ":" not in name.rsplit("/", 1)[-1]:
        name += ":latest"
    return name + (f"@{digest}" if digest else "")


def base_images(dockerfile: pathlib.Path = DOCKERFILE) -> list[str]:
    """The outside images the Dockerfile's ``FROM`` lines name (not its own stages)."""
    stages: set[str] = set()
    bases: list[str] = []
    for line in dockerfile.read_text().splitlines():
        m = re.match(r"\s*FROM\s+(?:--\S+\s+)*(\S+)(?:\s+AS\s+(\S+))?", line, re.I)
        if not m:
            continue
        ref, stage = m.group(1), m.group(2)
        if ref.lower() not in stages and qualify(ref) not in bases:
            bases.append(qualify(ref))
        if stage:
            stages.add(stage.lower())
    return bases


@dataclass
class Podman:
    """``podman`` with all of its state under ``base``.

    :param base: the directory holding podman's state, configuration and caches.
    """

    base: pathlib.Path
    env: dict[str, str] = field(default_factory=dict)

    @property
    def cache(self) -> pathlib.Path:
        """Where stand-in base images are kept between builds of this run."""
        return self.base / "cache"

    def run(self, *args: str, check: bool = True, timeout: float = 120,
            input: str | None = None) -> subprocess.CompletedProcess[str]:
        """``podman ARGS``; raises with podman's stderr when ``check`` and it fails."""
        res = subprocess.run(["podman", *args], env=self.env, capture_output=True, text=True,
                             timeout=timeout, input=input)
        if check and res.returncode != 0:
            raise RuntimeError(f"podman {' '.join(args)}: exit {res.returncode}\n"
                               f"{res.stdout[-4000:]}{res.stderr[-4000:]}")
        return res

    def popen(self, *args: str, **kwargs: object) -> subprocess.Popen[str]:
        """``podman ARGS`` in the background (its output is the caller's)."""
        return subprocess.Popen(["podman", *args], env=self.env, text=True,  # type: ignore[call-overload]
                                **kwargs)

    def has_image(self, reference: str) -> bool:
        return self.run("image", "exists", reference, check=False).returncode == 0

    def inspect(self, name: str) -> dict[str, object]:
        out = json.loads(self.run("inspect", name).stdout)
        return dict(out[0])

    def remove_containers(self) -> None:
        self.run("rm", "--all", "--force", "--time", "0", check=False, timeout=120)


#: Upper bounds for the containers' limits. runc could not raise nproc to
#: 65536 here although the sandbox's hard limit is higher; 32768 works.
_LIMIT_CAP = {resource.RLIMIT_NOFILE: 65536, resource.RLIMIT_NPROC: 32768}


def _limit(which: int) -> str:
    """``soft:hard`` for a container: this process's hard limit, capped."""
    hard = resource.getrlimit(which)[1]
    value = _LIMIT_CAP[which] if hard == resource.RLIM_INFINITY else min(hard, _LIMIT_CAP[which])
    return f"{value}:{value}"


def _write_config(base: pathlib.Path) -> dict[str, str]:
    for sub in ("root", "runroot", "tmp", "cache", "networks"):
        (base / sub).mkdir(parents=True, exist_ok=True)
    (base / "storage.conf").write_text(
        "[storage]\n"
        'driver = "overlay"\n'
        f'graphroot = "{base / "root"}"\n'
        f'runroot = "{base / "runroot"}"\n')
    (base / "containers.conf").write_text(
        "[containers]\n"
        # podman asks for 1048576 open files by default, above the sandbox's hard
        # limit: runc then fails ("error setting rlimit type 7"). Ask for what we have.
        f'default_ulimits = ["nofile={_limit(resource.RLIMIT_NOFILE)}", '
        f'"nproc={_limit(resource.RLIMIT_NPROC)}"]\n'
        "[engine]\n"
        'runtime = "runc"\n'
        'cgroup_manager = "cgroupfs"\n'
        'events_logger = "file"\n'
        f'events_logfile_path = "{base / "events.log"}"\n'
        f'tmp_dir = "{base / "tmp"}"\n'
        f'static_dir = "{base / "root" / "libpod"}"\n'
        f'volume_path = "{base / "root" / "volumes"}"\n'
        "[network]\n"
        f'network_config_dir = "{base / "networks"}"\n')
    (base / "registries.conf").write_text(
        # Nothing is pulled; short names resolve to Docker Hub's (local stand-ins).
        'unqualified-search-registries = ["docker.io"]\nshort-name-mode = "permissive"\n')
    env = dict(os.environ)
    env.update(CONTAINERS_CONF=str(base / "containers.conf"),
               CONTAINERS_STORAGE_CONF=str(base / "storage.conf"),
               CONTAINERS_REGISTRIES_CONF=str(base / "registries.conf"),
               TMPDIR=str(base / "tmp"))
    return env


def _unmount_under(path: pathlib.Path) -> None:
    """Unmount whatever is still mounted below ``path`` (overlay layers, shm), deepest first."""
    prefix = str(path.resolve()) + "/"
    with open("/proc/self/mounts", encoding="utf-8") as f:
        points = [line.split()[1] for line in f]
    for point in sorted((p for p in points if p.startswith(prefix)), key=len, reverse=True):
        subprocess.run(["umount", "-l", point], capture_output=True, check=False)


#: podman writes its blob-info cache here whatever the storage root says.
_BLOB_CACHE = pathlib.Path("/var/lib/containers/cache")


@contextlib.contextmanager
def session(base: pathlib.Path | None = None) -> Iterator[Podman]:
    """A :class:`Podman` whose state is removed at the end, even if the body fails."""
    made = base is None
    base = pathlib.Path(tempfile.mkdtemp(prefix="nodecache-podman-")) if base is None else base
    blob_cache_existed = _BLOB_CACHE.exists()
    pm = Podman(base, _write_config(base))
    try:
        yield pm
    finally:
        pm.remove_containers()
        # Not `system reset`: that also deletes networks outside our storage root.
        pm.run("rmi", "--all", "--force", check=False, timeout=300)
        _unmount_under(base)
        if made:
            shutil.rmtree(base, ignore_errors=True)
        if not blob_cache_existed:
            shutil.rmtree(_BLOB_CACHE, ignore_errors=True)
            with contextlib.suppress(OSError):
                _BLOB_CACHE.parent.rmdir()  # only if nothing else is there


def make_stand_in(pm: Podman, reference: str) -> None:
    """Import a local stand-in for ``reference`` (built once per :class:`Podman`)."""
    spec = STAND_INS.get(reference)
    if spec is None:
        raise RuntimeError(f"{reference}: no stand-in recipe (add one to STAND_INS in "
                           f"{pathlib.Path(__file__).name})")
    tarball = pm.cache / (re.sub(r"[^A-Za-z0-9.-]+", "_", reference) + ".tar")
    if not tarball.exists():
        partial = tarball.with_suffix(".partial")
        cmd = ["mmdebstrap", "--quiet", f"--variant={spec.variant}", "--mode=root",
               "--format=tar",
               # as Debian's slim images: no documentation, no locales but C
               "--dpkgopt=path-exclude=/usr/share/doc/*",
               "--dpkgopt=path-exclude=/usr/share/man/*",
               "--dpkgopt=path-exclude=/usr/share/locale/*",
               "--dpkgopt=path-include=/usr/share/doc/*/copyright",
               "--customize-hook=rm -rf \"$1\"/var/lib/apt/lists/*"]
        if spec.include:
            cmd.append("--include=" + ",".join(spec.include))
        subprocess.run([*cmd, spec.suite, str(partial), DEBIAN_MIRROR], check=True,
                       capture_output=True, timeout=900)
        partial.rename(tarball)
    pm.run("import", "--change", 'CMD ["bash"]', str(tarball), reference, timeout=300)


def build_image(pm: Podman, tag: str = IMAGE, context: pathlib.Path = ROOT,
                extra: Sequence[str] = ()) -> str:
    """Build the Dockerfile in ``context`` as ``tag``, with stand-in bases; return ``tag``."""
    for reference in base_images(context / "Dockerfile"):
        if not pm.has_image(reference):
            make_stand_in(pm, reference)
    args = ["build", "--network=host", "--pull=never", "--layers", "-t", tag,
            # podman 4.3's build does not read default_ulimits
            f"--ulimit=nofile={_limit(resource.RLIMIT_NOFILE)}",
            f"--ulimit=nproc={_limit(resource.RLIMIT_NPROC)}"]
    if HOST_CA.is_file():
        args += ["--secret", f"id=pip-ca,src={HOST_CA}"]
    pm.run(*args, *extra, str(context), timeout=1500)
    return tag


@pytest.fixture(scope="session")
def image() -> Iterator[tuple[Podman, str]]:
    """The repository's image, built once per test session: ``(podman, tag)``."""
    with session() as pm:
        yield pm, build_image(pm)
