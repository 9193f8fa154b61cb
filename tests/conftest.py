"""Test-wide settings: experiment loggers stay offline and write only to a temporary folder.

Set at import, before any test imports wandb, comet_ml or mlflow (see
/work/shared/notes/offline-loggers.md): without these, Comet and MLflow contact outside hosts.
"""

import os
import tempfile

_SCRATCH = tempfile.mkdtemp(prefix="mhc-tests-")

OFFLINE_ENVIRONMENT = {
    "WANDB_MODE": "offline",
    "WANDB_SILENT": "true",
    "COMET_START_ONLINE": "false",
    "COMET_ERROR_TRACKING_ENABLE": "false",
    "COMET_AUTO_LOG_ENV_DETAILS": "false",
    "MLFLOW_DISABLE_TELEMETRY": "true",
}
for _key, _value in OFFLINE_ENVIRONMENT.items():
    os.environ[_key] = _value
# MHC_CACHE_DIR: the native kernels are built for this run, not into the user's cache.
for _key in ("WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR", "MPLCONFIGDIR",
             "MHC_CACHE_DIR"):
    os.environ[_key] = os.path.join(_SCRATCH, _key.lower())
    os.makedirs(os.environ[_key], exist_ok=True)
