"""MHCLightningCallback validates its arguments at construction, naming each bad one."""

import pytest

from mhc_torch.callback import MHCLightningCallback
from mhc_torch.utils import MHCLightningCallback as GuideImport


def test_defaults_are_the_guides():
    callback = MHCLightningCallback()
    assert callback.log_mixing_weights is True
    assert callback.log_entropy is True
    assert callback.log_gradients is True
    assert callback.log_every_n_steps is None
    assert callback.rank_zero_only is True
    assert callback.prefix == "mhc"


def test_both_documented_import_paths_give_the_class():
    import mhc_torch

    assert GuideImport is MHCLightningCallback  # the guide's: mhc_torch.utils
    assert mhc_torch.MHCLightningCallback is MHCLightningCallback


BAD = [
    ({"log_mixing_weights": 1}, TypeError, "log_mixing_weights=1 is invalid"),
    ({"log_entropy": "yes"}, TypeError, "log_entropy='yes' is invalid"),
    ({"log_gradients": None}, TypeError, "log_gradients=None is invalid"),
    ({"rank_zero_only": 0}, TypeError, "rank_zero_only=0 is invalid"),
    ({"log_every_n_steps": 0}, ValueError, "log_every_n_steps=0 is invalid.*>= 1"),
    ({"log_every_n_steps": -5}, ValueError, "log_every_n_steps=-5 is invalid"),
    ({"log_every_n_steps": 2.0}, TypeError, "log_every_n_steps=2.0 is invalid"),
    ({"log_every_n_steps": True}, TypeError, "log_every_n_steps=True is invalid"),
    ({"prefix": ""}, ValueError, "prefix='' is invalid: prefix must be a non-empty string"),
    ({"prefix": "/mhc"}, ValueError, "prefix='/mhc' is invalid"),
    ({"prefix": "mhc/"}, ValueError, "prefix='mhc/' is invalid"),
    ({"prefix": 3}, TypeError, "prefix=3 is invalid"),
]


@pytest.mark.parametrize(("kwargs", "error", "message"), BAD)
def test_bad_arguments_are_rejected_with_their_name(kwargs, error, message):
    with pytest.raises(error, match=message):
        MHCLightningCallback(**kwargs)


def test_valid_arguments_are_kept():
    callback = MHCLightningCallback(log_mixing_weights=False, log_entropy=False,
                                    log_gradients=False, log_every_n_steps=7,
                                    rank_zero_only=False, prefix="stability/mhc")
    assert (callback.log_every_n_steps, callback.prefix) == (7, "stability/mhc")
    assert not (callback.log_mixing_weights or callback.log_entropy or callback.log_gradients)
    assert callback.rank_zero_only is False
