"""`python -m mhc_jax.demo` trains with the pmap step on 2 host devices and learns digits."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

TIMEOUT_S = 300


@pytest.mark.slow
def test_demo_trains_over_two_devices_and_writes_the_dashboard(tmp_path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "mhc_jax.demo", "--epochs", "2", "--depth", "8",
         "--devices", "2", "--logdir", str(tmp_path)],
        capture_output=True, text=True, timeout=TIMEOUT_S)
    assert done.returncode == 0, done.stderr
    assert "pmap over 2 cpu device(s), batch 64 (32 per device)" in done.stdout
    assert len(re.findall(r"epoch \d/2", done.stdout)) == 2
    accuracy = float(re.search(r"final validation accuracy ([0-9.]+)", done.stdout).group(1))
    assert accuracy > 0.8  # 10 classes: chance is 0.1
    events = EventAccumulator(str(tmp_path))
    events.Reload()
    assert [e.step for e in events.Scalars("mhc/net/entropy/mean")] == [22, 44]
    assert "mhc/net/weights_over_steps/layer_8" in events.Tags()["images"]
