"""The user guide's integration example (the README's snippet) runs as written, its loss goes
down, and the default logger (TensorBoard) receives the dashboard."""

import os
import runpy

from tests.torch.scripts.mhc_testing import tensorboard_events

SCRIPT = os.path.join(os.path.dirname(__file__), "scripts", "guide_example.py")


def test_guide_example_trains_and_fills_the_dashboard(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the Trainer's default logger writes ./lightning_logs
    namespace = runpy.run_path(SCRIPT, run_name="__main__")
    trainer = namespace["trainer"]
    assert trainer.global_step == 3 * 29  # 1797 digits in batches of 64, 3 epochs
    events = tensorboard_events(str(tmp_path / "lightning_logs" / "version_0"))
    loss = [e.value for e in sorted(events.Scalars("train_loss"), key=lambda e: e.step)]
    assert len(loss) >= 8
    assert loss[-1] < 0.5 * loss[0]
    assert sum(loss[-3:]) < sum(loss[:3])
    scalars = set(events.Tags()["scalars"])
    assert {"mhc/net/entropy/mean", "mhc/net/skip_gain", "mhc/net/highway/attenuation",
            "mhc/net/weight/layer_50/index_0"} <= scalars
    steps = [e.step for e in events.Scalars("mhc/net/entropy/mean")]
    assert steps == list(range(0, 87, 10))
    images = set(events.Tags()["images"])
    assert {"mhc/net/mixing_weights", "mhc/net/highway",
            "mhc/net/weights_over_steps/layer_50"} <= images
