"""Shared pytest set-up. Fixtures live in their own modules (tests/kit/).

Privileged tests (marked ``privileged``) need root for namespaces and firewall
rules; without root they fail rather than skip, so missing work stays visible.

``image`` (tests/kit/podman.py) is imported here so that it is one session-wide
fixture: the image is built once, whichever modules use it.

A compiled module older than its source would be tested instead of the edit:
the session stops before collecting anything (``make .venv/.installed`` rebuilds).
"""
import pytest

from nodecache import build
from tests.kit.podman import image  # noqa: F401


def pytest_configure(config: pytest.Config) -> None:
    if build.pure_requested():
        return
    stale = build.stale()
    if stale:
        pytest.exit(f"compiled modules older than their source: {', '.join(stale)}; "
                    f"rebuild them (make .venv/.installed) or run with "
                    f"{build.PURE_ENV}=1", returncode=4)
