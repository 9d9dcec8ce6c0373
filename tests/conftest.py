"""Shared pytest set-up. Fixtures live in their own modules (tests/kit/).

Privileged tests (marked ``privileged``) need root for namespaces and firewall
rules; without root they fail rather than skip, so missing work stays visible.

``image`` (tests/kit/podman.py) is imported here so that it is one session-wide
fixture: the image is built once, whichever modules use it.
"""
from tests.kit.podman import image  # noqa: F401
