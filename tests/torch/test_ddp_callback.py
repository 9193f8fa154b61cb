"""A real two-process DDP run on CPU (gloo), in a subprocess: parameters agree on both
ranks, only rank 0 logs, every rank resets its buffers, and every mode trains with
find_unused_parameters=False."""

import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest

from tests.torch.scripts.mhc_testing import image_files

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(ROOT, "tests", "torch", "scripts", "ddp_train.py")
STACKS = ("residual", "hc", "simplex", "softmax", "identity", "gated", "carry")
TIMEOUT_S = 300


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS="1")
    for key in ("LOCAL_RANK", "NODE_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    process = subprocess.Popen([sys.executable, SCRIPT, str(out)], cwd=ROOT, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               start_new_session=True)
    try:
        output, _ = process.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)  # the script and the rank it launched
        output, _ = process.communicate()
        pytest.fail(f"DDP run exceeded {TIMEOUT_S} s:\n{output[-4000:]}")
    assert process.returncode == 0, output[-4000:]
    return out


def _load(ddp_run, rank, name):
    path = os.path.join(ddp_run, f"rank{rank}", name)
    if name.endswith(".npz"):
        with np.load(path) as data:
            return {key: data[key] for key in data.files}
    with open(path) as file:
        return json.load(file)


def _mhc_scalars(ddp_run, rank, prefix):
    out = {}
    for step, metrics in _load(ddp_run, rank, "metrics.json"):
        for tag, value in metrics.items():
            if tag.startswith(prefix):
                out.setdefault(tag, {})[step] = value
    return out


def test_parameters_agree_on_both_ranks_after_training(ddp_run):
    init0, init1 = _load(ddp_run, 0, "init.npz"), _load(ddp_run, 1, "init.npz")
    final0, final1 = _load(ddp_run, 0, "final.npz"), _load(ddp_run, 1, "final.npz")
    assert set(final0) == set(final1)
    for name in STACKS:
        assert any(key.startswith(f"stacks.{name}.") for key in final0), name
    assert any(not np.array_equal(init0[k], init1[k]) for k in init0)  # seeded apart
    for key in final0:
        np.testing.assert_array_equal(final0[key], final1[key], err_msg=key)
    for name in ("hc", "simplex", "softmax", "identity", "gated", "carry"):
        key = f"stacks.{name}.theta"
        assert not np.array_equal(final0[key], init0[key]), f"{key} never trained"
    assert not np.array_equal(final0["stacks.gated.gamma"], init0["stacks.gated.gamma"])


def test_buffers_were_reset_at_every_batch_on_both_ranks(ddp_run):
    for rank in (0, 1):
        resets = _load(ddp_run, rank, "resets.json")
        assert resets == [True] * 8, rank  # 2 epochs x 4 batches per rank


def test_only_rank_zero_logged_scalars_and_images(ddp_run):
    rank0 = _mhc_scalars(ddp_run, 0, "mhc/")
    assert _mhc_scalars(ddp_run, 1, "mhc/") == {}
    assert _mhc_scalars(ddp_run, 1, "perrank/") == {}
    assert image_files(os.path.join(ddp_run, "rank1")) == {}
    for name in STACKS:
        assert sorted(rank0[f"mhc/stacks.{name}/entropy/mean"]) == [0, 3, 6]
        assert sorted(rank0[f"mhc/stacks.{name}/highway/attenuation"]) == [0, 3, 6]
    images = image_files(os.path.join(ddp_run, "rank0"))
    assert images["mhc/stacks.simplex/mixing_weights"] == [0, 3, 6]
    assert images["mhc/stacks.gated/highway"] == [0, 3, 6]
    assert images["mhc/stacks.carry/weights_over_steps/layer_4"] == [4, 8]


def test_per_rank_logging_gathers_every_rank_to_rank_zero(ddp_run):
    per_rank = _mhc_scalars(ddp_run, 0, "perrank/")
    for rank in (0, 1):
        for name in STACKS:
            tag = f"perrank/rank{rank}/stacks.{name}/entropy/mean"
            assert sorted(per_rank[tag]) == [0, 5], tag
    # The parameters are synchronised, so both ranks report the same weights.
    for tag, values in per_rank.items():
        if tag.startswith("perrank/rank0/"):
            assert per_rank[tag.replace("/rank0/", "/rank1/", 1)] == values, tag
    images = image_files(os.path.join(ddp_run, "rank0"))
    assert images["perrank/rank1/stacks.hc/mixing_weights"] == [0, 5]
