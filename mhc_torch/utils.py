"""The user guide's import path: ``from mhc_torch.utils import MHCLightningCallback``."""

from mhc_torch.callback import MHCLightningCallback

__all__ = ["MHCLightningCallback"]
