"""PyPI ``mhc`` 0.5.5, the package the user guide describes, imported from benchmarks/.peer.

It is installed by the benchmark's own setup (``pip install --no-deps --target
benchmarks/.peer mhc==0.5.5``), never into the virtual environment and never vendored.
"""

from __future__ import annotations

import importlib.metadata
import sys
from pathlib import Path
from types import ModuleType

PEER_DIR = Path(__file__).resolve().parent / ".peer"
PEER_VERSION = "0.5.5"
INSTALL_COMMAND = (f".venv/bin/python -m pip install --no-deps --target benchmarks/.peer "
                   f"mhc=={PEER_VERSION}")


def installed_version() -> str | None:
    """The version of the ``mhc`` distribution in benchmarks/.peer, or None if absent."""
    for dist in importlib.metadata.distributions(path=[str(PEER_DIR)]):
        if dist.metadata["Name"] == "mhc":
            return dist.version
    return None


def import_peer() -> ModuleType:
    """The peer's ``mhc`` module, after checking that benchmarks/.peer holds version 0.5.5."""
    version = installed_version()
    if version != PEER_VERSION:
        raise RuntimeError(
            f"benchmarks/.peer holds mhc {version!r}, expected {PEER_VERSION}; "
            f"install it with: {INSTALL_COMMAND}")
    if str(PEER_DIR) not in sys.path:
        sys.path.insert(0, str(PEER_DIR))
    import mhc

    if Path(mhc.__file__).resolve().parent != PEER_DIR / "mhc":
        raise RuntimeError(f"'import mhc' found {mhc.__file__}, not the copy in {PEER_DIR}")
    return mhc
