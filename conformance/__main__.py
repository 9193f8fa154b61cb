"""python -m conformance [--backend NAME ...] [--family NAME ...] [--json PATH]

Checks every backend against the spec's golden vectors of both families (history mixing
and multi-stream mHC), prints the matrix, writes a JSON report, and exits 1 when any cell
fails (2 when a requested backend or family is unknown).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from conformance.backends import all_backends
from conformance.runner import failed, render_matrix, run, to_json
from mhc_spec import vectors
from mhc_spec.streams import vectors as stream_vectors

FAMILIES = ("history", "streams")


def main(argv: list[str] | None = None) -> int:
    backends = all_backends()
    names = [b.name for b in backends]
    parser = argparse.ArgumentParser(prog="python -m conformance", description=__doc__)
    parser.add_argument("--backend", action="append", choices=names,
                        help="run only this backend (repeatable); default: all")
    parser.add_argument("--json", type=Path, default=Path("conformance-report.json"),
                        help="where to write the JSON report")
    parser.add_argument("--family", action="append", choices=FAMILIES,
                        help="run only this family of vectors (repeatable); default: both")
    parser.add_argument("--vectors", type=Path, default=vectors.default_directory(),
                        help="the history family's vectors")
    parser.add_argument("--stream-vectors", type=Path,
                        default=stream_vectors.default_directory(),
                        help="the stream family's vectors")
    args = parser.parse_args(argv)
    chosen = [b for b in backends if not args.backend or b.name in args.backend]
    families = args.family or FAMILIES
    cases = []
    if "history" in families:
        cases += vectors.load_vectors(args.vectors)
    if "streams" in families:
        cases += stream_vectors.load_vectors(args.stream_vectors)
    cells = run(chosen, cases)
    print(render_matrix(cells))
    args.json.write_text(json.dumps(to_json(cells), indent=1) + "\n")
    print(f"report: {args.json}")
    return 1 if failed(cells) else 0


if __name__ == "__main__":
    sys.exit(main())
