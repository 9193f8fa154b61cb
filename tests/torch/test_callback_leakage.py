"""With carry_history=True the stack keeps its states between calls; the callback's resets
make each batch's outputs independent of the batches before it, in every stage."""

import lightning as L
import pytest
import torch
from torch import nn

from mhc_torch import MHCSequential
from mhc_torch.callback import MHCLightningCallback
from tests.torch.scripts.mhc_testing import make_batches

STAGES = ("fit", "validate", "test", "predict")
# logger=False keeps these runs to the resets; the callback says the dashboard is off.
pytestmark = pytest.mark.filterwarnings("ignore:MHCLightningCallback. the trainer has no logger")


class CarryingModule(L.LightningModule):
    """A carrying stack nested two containers deep; records every output it produces."""

    def __init__(self):
        super().__init__()
        self.build()
        self.outputs: list[torch.Tensor] = []

    def build(self):
        torch.manual_seed(0)
        stack = MHCSequential([nn.Linear(6, 6) for _ in range(4)], max_history=3,
                               mode="mhc", carry_history=True)
        self.body = nn.ModuleDict({"inner": nn.Sequential(stack)})

    def _run(self, batch):
        x, y = batch
        out = self.body["inner"](x)
        self.outputs.append(out.detach().clone())
        return nn.functional.cross_entropy(out, y)

    def training_step(self, batch, batch_idx):
        return self._run(batch)

    def validation_step(self, batch, batch_idx):
        self._run(batch)

    def test_step(self, batch, batch_idx):
        self._run(batch)

    def predict_step(self, batch, batch_idx):
        self._run(batch)
        return self.outputs[-1]

    def configure_optimizers(self):
        # lr = 0: the parameters stay put, so only carried history could change an output.
        return torch.optim.SGD(self.parameters(), lr=0.0)


class LateModule(CarryingModule):
    """The same stack, created in configure_model (after the callback's setup hook)."""

    def build(self):
        self.body = None

    def configure_model(self):
        if self.body is None:
            super().build()


class StartHookModule(CarryingModule):
    """The same stack, created in the module's own stage-start hook (which Lightning calls
    after the callbacks' hooks of the same name)."""

    def build(self):
        self.body = None

    def _build_late(self):
        if self.body is None:
            super().build()

    def on_train_start(self):
        super().build()  # replaces the stack configure_optimizers needed

    def on_validation_start(self):
        self._build_late()

    def on_test_start(self):
        self._build_late()

    def on_predict_start(self):
        self._build_late()

    def configure_optimizers(self):
        self._build_late()  # the optimizer needs the parameters before on_train_start
        return super().configure_optimizers()


def _last_output(stage: str, loader, with_callback: bool,
                 module: type[CarryingModule] = CarryingModule) -> torch.Tensor:
    model = module()
    trainer = L.Trainer(max_epochs=1, accelerator="cpu", logger=False,
                        callbacks=[MHCLightningCallback()] if with_callback else [],
                        enable_progress_bar=False, enable_model_summary=False,
                        enable_checkpointing=False, num_sanity_val_steps=0)
    getattr(trainer, stage)(model, loader)
    return model.outputs[-1]


def _a_then_b_and_b_alone():
    a_then_b = make_batches(2, seed=3)
    b_alone = torch.utils.data.DataLoader([list(a_then_b)[1]], batch_size=None)
    return a_then_b, b_alone


@pytest.mark.parametrize("module", [CarryingModule, LateModule, StartHookModule])
@pytest.mark.parametrize("stage", STAGES)
def test_batch_outputs_do_not_depend_on_earlier_batches(stage, module):
    a_then_b, b_alone = _a_then_b_and_b_alone()
    after_a = _last_output(stage, a_then_b, with_callback=True, module=module)
    alone = _last_output(stage, b_alone, with_callback=True, module=module)
    torch.testing.assert_close(after_a, alone, rtol=0, atol=0)


@pytest.mark.parametrize("stage", STAGES)
def test_without_the_callback_history_does_carry_over(stage):
    # The control: the stack really carries history, so the test above can fail.
    a_then_b, b_alone = _a_then_b_and_b_alone()
    after_a = _last_output(stage, a_then_b, with_callback=False)
    alone = _last_output(stage, b_alone, with_callback=False)
    assert not torch.allclose(after_a, alone)
