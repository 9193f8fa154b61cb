"""What the figures were measured on: processor, cores, library versions, threads, load."""

from __future__ import annotations

import datetime
import importlib.metadata
import os
import platform
import subprocess


def cpu_model() -> str:
    """The processor's model name from /proc/cpuinfo (platform.processor() as a fallback)."""
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def version_of(distribution: str) -> str:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def load_average() -> tuple[float, float, float]:
    return os.getloadavg()


def busy_processes(pattern: str = "pytest|mhc_torch.demo|mhc_jax.demo") -> list[str]:
    """Command lines of other processes that would compete for the cores (pgrep -fa)."""
    result = subprocess.run(["pgrep", "-fa", pattern], capture_output=True, text=True)
    own = os.getpid()
    return [line for line in result.stdout.splitlines()
            if line and int(line.split()[0]) != own]


def describe() -> dict[str, object]:
    """A JSON-ready description of this machine and software environment."""
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "cpu": cpu_model(),
        "logical_cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": {name: version_of(name) for name in
                     ("torch", "lightning", "jax", "jaxlib", "flax", "optax", "numpy")},
        "env_threads": {name: os.environ.get(name) for name in
                        ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "XLA_FLAGS")},
        "load_average": load_average(),
    }
