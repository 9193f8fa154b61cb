"""PyPI ``hyper-connections`` 0.4.11 (lucidrains), the multi-stream peer, imported from
benchmarks/.peer-hc.

It is installed by the benchmark's own setup (``pip install --no-deps --target
benchmarks/.peer-hc`` of the pinned distributions below), never into the virtual environment
and never vendored; it has its own folder so that nothing it brings can shadow PyPI ``mhc``
0.5.5 in benchmarks/.peer. Its pure-Python dependencies are pinned here too; torch is the
virtual environment's.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import sys
from pathlib import Path
from types import ModuleType

PEER_DIR = Path(__file__).resolve().parent / ".peer-hc"
# Distribution name -> pinned version. torch-einops-utils is imported by hyper_connections.mHCv2.
PINNED = {"hyper-connections": "0.4.11", "einops": "0.8.2", "torch-einops-utils": "0.2.0"}


def requirements() -> str:
    """The pins as pip arguments, e.g. ``hyper-connections==0.4.11 einops==0.8.2 ...``."""
    return " ".join(f"{name}=={version}" for name, version in PINNED.items())


INSTALL_COMMAND = (".venv/bin/python -m pip install --no-deps --target benchmarks/.peer-hc "
                   + requirements())


def installed_versions() -> dict[str, str | None]:
    """{distribution: version found in benchmarks/.peer-hc, or None} for each pinned one."""
    found = {dist.metadata["Name"].lower().replace("_", "-"): dist.version
             for dist in importlib.metadata.distributions(path=[str(PEER_DIR)])}
    return {name: found.get(name) for name in PINNED}


def is_installed() -> bool:
    """Whether benchmarks/.peer-hc holds exactly the pinned versions."""
    return installed_versions() == PINNED


def missing_reason() -> str | None:
    """None when the pinned peer is installed, else what is wrong and how to install it."""
    versions = installed_versions()
    if versions == PINNED:
        return None
    wrong = ", ".join(f"{name} {versions[name]!r} (want {version})"
                      for name, version in PINNED.items() if versions[name] != version)
    return f"benchmarks/.peer-hc holds {wrong}; install with: {INSTALL_COMMAND}"


def import_module(name: str) -> ModuleType:
    """``name`` (``hyper_connections`` or one of its submodules) from benchmarks/.peer-hc,
    after checking the pinned versions and that the import resolved to that folder."""
    reason = missing_reason()
    if reason is not None:
        raise RuntimeError(reason)
    if str(PEER_DIR) not in sys.path:
        sys.path.insert(0, str(PEER_DIR))
    module = importlib.import_module(name)
    if PEER_DIR not in Path(module.__file__).resolve().parents:
        raise RuntimeError(f"'import {name}' found {module.__file__}, not the copy in {PEER_DIR}")
    return module
