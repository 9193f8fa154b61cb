"""File format shared by every family's golden vectors: one JSON document per case (sorted
keys, arrays as nested lists, floats in shortest round-trip form) plus a manifest listing
the cases in order, each stamped with the vectors' and the spec's versions."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np

from mhc_spec.version import SPEC_VERSION

MANIFEST = "manifest.json"


def to_json_text(document: dict[str, Any]) -> str:
    """A case document as deterministic JSON text (arrays become nested lists)."""

    def plain(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        if isinstance(value, np.ndarray):
            return value.tolist()
        return value

    return json.dumps(plain(document), sort_keys=True) + "\n"


def write_cases(directory: str | Path, cases: Iterable[tuple[str, str]],
                vectors_version: int) -> list[Path]:
    """Write ``(name, json_text)`` cases and their manifest; returns the paths written."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    written, names = [], []
    for name, text in cases:
        path = directory / f"{name}.json"
        path.write_text(text)
        written.append(path)
        names.append(name)
    manifest = {"vectors_version": vectors_version, "spec_version": SPEC_VERSION,
                "cases": names}
    path = directory / MANIFEST
    path.write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    written.append(path)
    return written


def case_paths(directory: str | Path) -> list[Path]:
    """The case files listed in the manifest of ``directory``, in order."""
    directory = Path(directory)
    manifest = json.loads((directory / MANIFEST).read_text())
    return [directory / f"{name}.json" for name in manifest["cases"]]


def run_generator(description: str, default_directory: Path,
                  write: Callable[[str | Path], list[Path]],
                  argv: list[str] | None = None) -> None:
    """The command line of a vector generator: ``python -m ... [DIRECTORY]``."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("directory", nargs="?", default=str(default_directory))
    args = parser.parse_args(argv)
    paths = write(args.directory)
    size = sum(p.stat().st_size for p in paths)
    print(f"wrote {len(paths) - 1} cases ({size / 1e6:.2f} MB) to {args.directory}")
