"""Run every benchmark section and write benchmarks/RESULTS.md.

    python -m benchmarks [--quick] [--sections torch_speed,torch_memory,...] [--wait-quiet]

Each section runs in its own process(es) and writes benchmarks/results/<section>*.json;
the report is then rendered from those files. A background sampler records the load average
and any competing process (pytest, the demos) while the sections run, so RESULTS.md can say
whether the machine was shared.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import threading
import time

from benchmarks import machine, report
from benchmarks.results_io import RESULTS_DIR, write_result

SECTIONS = ("torch_speed", "torch_memory", "lightning_overhead", "jax_speed", "jax_compile",
            "torch_streams")
QUIET_FOR_S = 60.0
POLL_S = 30.0
GIVE_UP_S = 25 * 60.0


def wait_until_quiet(log=print) -> dict[str, object]:
    """Poll every POLL_S until no competing process was seen for QUIET_FOR_S (max GIVE_UP_S)."""
    start = time.monotonic()
    quiet_since: float | None = None
    while True:
        busy = machine.busy_processes()
        now = time.monotonic()
        if busy:
            quiet_since = None
            log(f"waiting for {len(busy)} competing process(es): {busy[0][:100]}")
        elif quiet_since is None:
            quiet_since = now
        if quiet_since is not None and now - quiet_since >= QUIET_FOR_S:
            return {"waited_s": now - start, "quiet": True}
        if now - start >= GIVE_UP_S:
            return {"waited_s": now - start, "quiet": False}
        time.sleep(POLL_S if busy else min(POLL_S, QUIET_FOR_S / 2))


class Sampler(threading.Thread):
    """Samples the load average and competing processes every ``period`` seconds."""

    def __init__(self, period: float = 10.0) -> None:
        super().__init__(daemon=True)
        self.period = period
        self.samples: list[tuple[float, list[str]]] = []
        self.stop_event = threading.Event()

    def run(self) -> None:
        while not self.stop_event.is_set():
            self.samples.append((machine.load_average()[0], machine.busy_processes()))
            self.stop_event.wait(self.period)

    def summary(self) -> dict[str, object]:
        busy = [b for _, b in self.samples if b]
        loads = [load for load, _ in self.samples]
        commands = sorted({line.split(maxsplit=1)[-1][:80] for b in busy for line in b})
        text = (f"yes: competing processes seen in {len(busy)} of {len(self.samples)} samples "
                f"(every {self.period:.0f} s): {'; '.join(commands[:5])}" if busy else
                f"no competing test/demo process seen in {len(self.samples)} samples "
                f"(every {self.period:.0f} s)")
        if loads:
            text += f"; 1-min load average during the run: max {max(loads):.2f}"
        return {"shared": bool(busy), "shared_summary": text, "max_load": max(loads, default=0)}


def clear_old(sections: list[str]) -> None:
    for path in RESULTS_DIR.glob("*.json"):
        if path.stem == "run" or any(path.stem.startswith(s) for s in sections):
            path.unlink()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a reduced sweep (minutes)")
    parser.add_argument("--sections", default=",".join(SECTIONS),
                        help=f"comma-separated subset of {','.join(SECTIONS)}")
    parser.add_argument("--wait-quiet", action="store_true",
                        help="first wait until no pytest/demo process ran for 60 s "
                             "(polls every 30 s, gives up after 25 min)")
    args = parser.parse_args(argv)
    sections = [s for s in args.sections.split(",") if s]
    unknown = sorted(set(sections) - set(SECTIONS))
    if unknown:
        parser.error(f"--sections: unknown {unknown}; choose from {list(SECTIONS)}")
    waited = wait_until_quiet() if args.wait_quiet else None
    clear_old(sections)
    start = time.monotonic()
    load_before = machine.load_average()
    sampler = Sampler()
    sampler.start()
    durations = {}
    for section in sections:
        print(f"== {section}", flush=True)
        began = time.monotonic()
        command = [sys.executable, "-m", f"benchmarks.{section}"] + ["--quick"] * args.quick
        subprocess.run(command, check=True, env=os.environ.copy())
        durations[section] = time.monotonic() - began
    sampler.stop_event.set()
    sampler.join()
    write_result("run", {
        "quick": args.quick,
        "sections": sections,
        "section_s": durations,
        "total_s": time.monotonic() - start,
        "machine": machine.describe(),
        "load_before": load_before,
        "load_after": machine.load_average(),
        "wait": waited,
        **sampler.summary(),
    })
    report.main([])


if __name__ == "__main__":
    main()
