# The user guide's integration example, runnable: the HoneyBadgerModule code is the guide's
# with only the import line changed (mhc -> mhc_torch); data and Trainer arguments added.
import lightning as L
import torch
import torch.nn as nn
from sklearn.datasets import load_digits
from torch.utils.data import DataLoader, TensorDataset

from mhc_torch import MHCSequential
from mhc_torch.utils import MHCLightningCallback


class HoneyBadgerModule(L.LightningModule):
    def __init__(self, channels=64, depth=50):
        super().__init__()
        # 1. Define mHC segments
        self.net = MHCSequential(
            [nn.Linear(channels, channels) for _ in range(depth)],
            max_history=4,
            mode="mhc"
        )
        self.loss_fn = nn.CrossEntropyLoss()

    def training_step(self, batch, batch_idx):
        x, y = batch
        # MHCSequential handles the history pointers behind the scenes
        preds = self.net(x)
        loss = self.loss_fn(preds, y)
        self.log("train_loss", loss)
        return loss

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=1e-3)


# 8x8 digits bundled with scikit-learn: 64 features, labels 0-9 (scored on the 64 outputs)
x, y = load_digits(return_X_y=True)
train_loader = DataLoader(
    TensorDataset(torch.tensor(x / 16.0, dtype=torch.float32), torch.tensor(y)),
    batch_size=64,
    shuffle=True,
)

# Start training with the stability watchdog
mhc_watchdog = MHCLightningCallback()
trainer = L.Trainer(max_epochs=3, log_every_n_steps=10, callbacks=[mhc_watchdog])
trainer.fit(HoneyBadgerModule(), train_loader)
