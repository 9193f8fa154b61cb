"""Memory of a forward+backward: bytes saved for backward and peak RSS of a training step.

Saved for backward: ``torch.autograd.graph.saved_tensors_hooks`` sees every tensor autograd
keeps for backward during one forward; unique storages are counted once (a view of a stacked
window counts the whole stack). Nothing saved is released before backward starts, so the sum
at the end of forward is the peak. Reported in total and without the parameters' storages
(the activations, which grow with the batch).

Peak RSS: one fresh subprocess per variant builds the model, runs one SGD training step
(forward, backward, step, zero_grad), then resets the kernel's peak-RSS counter (write "5" to
/proc/self/clear_refs), runs a second step and reads VmHWM. glibc's mmap threshold is pinned
(MALLOC_MMAP_THRESHOLD_) so that freed tensors go back to the kernel and RSS follows live
memory. Reported: the peak (whole process, interpreter and libraries included) and the
increment of the step over the RSS just before it.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys

import torch
from torch import nn

from benchmarks import machine, torch_threads
from benchmarks.results_io import write_result
from benchmarks.torch_speed import PEER_HISTORY, ours_available
from benchmarks.torch_stacks import (
    DEPTH,
    HISTORIES,
    KINDS,
    SHAPES,
    build,
    linear_layers,
    parse_shape,
    peer_label,
    shape_label,
    variant_name,
)

CHILD_ENV = {"MALLOC_MMAP_THRESHOLD_": "4096", "MALLOC_TRIM_THRESHOLD_": "0"}


def storage_key(tensor: torch.Tensor) -> tuple[int, int]:
    storage = tensor.untyped_storage()
    return storage.data_ptr(), storage.nbytes()


def saved_for_backward(model: nn.Module, x: torch.Tensor) -> dict[str, int]:
    """Bytes of the unique storages autograd saves during ``model(x)``: total and activations."""
    saved: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        pointer, nbytes = storage_key(tensor)
        saved[pointer] = nbytes
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        out = model(x)
    parameters = {storage_key(p)[0] for p in model.parameters()}
    del out
    total = sum(saved.values())
    activations = sum(n for pointer, n in saved.items() if pointer not in parameters)
    return {"saved_bytes": total, "saved_activation_bytes": activations,
            "saved_storages": len(saved)}


def variant_names(quick: bool, with_ours: bool) -> list[str]:
    names = ["residual"]
    if with_ours:
        histories = (4,) if quick else HISTORIES
        names += [variant_name(kind, h) for h in histories for kind in KINDS]
    names += [variant_name(peer_label(detach), PEER_HISTORY) for detach in (None, False)]
    return names


def rss_kib(field: str) -> int:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def rss_child(name: str, label: str) -> dict[str, int]:
    """In this (fresh) process: RSS before and peak during a second training step."""
    torch_threads.configure()
    width, batch = parse_shape(label)
    torch.manual_seed(1)
    model = build(name, linear_layers(width, DEPTH))
    x = torch.randn(batch, width)
    g = torch.randn(batch, width) / (batch * width) ** 0.5
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-4)

    def train_step() -> None:
        model(x).backward(g)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    train_step()
    gc.collect()
    before = rss_kib("VmRSS")
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")
    train_step()
    peak = rss_kib("VmHWM")
    return {"rss_before_bytes": before * 1024, "peak_rss_bytes": peak * 1024,
            "step_rss_bytes": (peak - before) * 1024}


def measure_rss(name: str, label: str) -> dict[str, int]:
    env = {**os.environ, **CHILD_ENV}
    command = [sys.executable, "-m", "benchmarks.torch_memory", "--rss-child", name,
               "--shape", label]
    result = subprocess.run(command, check=True, capture_output=True, text=True, env=env,
                            timeout=600)
    return json.loads(result.stdout.strip().splitlines()[-1])


def run(quick: bool) -> dict[str, object]:
    threads = torch_threads.configure()
    load_before = machine.load_average()
    missing = ours_available()
    names = variant_names(quick, missing is None)
    shapes = [shape_label(*shape) for shape in (SHAPES[:2] if quick else SHAPES)]
    rows = []
    for label in shapes:
        width, batch = parse_shape(label)
        layers = linear_layers(width, DEPTH)
        x = torch.randn(batch, width)
        for name in names:
            row = {"shape": label, "name": name,
                   **saved_for_backward(build(name, layers), x), **measure_rss(name, label)}
            print(f"  {label} {name}: saved {row['saved_activation_bytes'] / 2**20:.1f} MiB "
                  f"activations, step RSS +{row['step_rss_bytes'] / 2**20:.1f} MiB", flush=True)
            rows.append(row)
    return {
        "section": "torch_memory",
        "quick": quick,
        "depth": DEPTH,
        "threads": threads,
        "child_env": CHILD_ENV,
        "machine": machine.describe(),
        "load_before": load_before,
        "load_after": machine.load_average(),
        "notes": [] if missing is None else [f"mhc_torch unavailable ({missing})"],
        "rows": rows,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="H=4 and two shapes only")
    parser.add_argument("--rss-child", metavar="VARIANT", help=argparse.SUPPRESS)
    parser.add_argument("--shape", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.rss_child is not None:
        print(json.dumps(rss_child(args.rss_child, args.shape)))
        return
    path = write_result("torch_memory", run(args.quick))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
