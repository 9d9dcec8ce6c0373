"""Helpers the tests share: namespaces, fake and real upstreams, agents, clients, builders."""
from pathlib import Path

#: The repository's top directory.
ROOT = Path(__file__).resolve().parents[2]
#: Corefiles, manifests and client data the tests read.
DATA = ROOT / "tests" / "data"
