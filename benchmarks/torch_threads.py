"""The thread settings every PyTorch benchmark process uses (the issue's 2 threads)."""

from __future__ import annotations

import os

import torch

# The setting; MHC_BENCH_THREADS overrides it (recorded in RESULTS.md when it does).
NUM_THREADS = int(os.environ.get("MHC_BENCH_THREADS", "2"))


def configure() -> dict[str, int]:
    """Pin intra-op threads to NUM_THREADS and inter-op to 1; return what torch reports."""
    torch.set_num_threads(NUM_THREADS)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass  # already set once in this process: keep the earlier value
    return {"intra_op": torch.get_num_threads(), "inter_op": torch.get_num_interop_threads()}
