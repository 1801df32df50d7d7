"""Ablation 'extra_features' of the pretrained recipe (see ``_ablation.py``)."""

import ml_collections

from meta_train.configs import _ablation


def get_config() -> ml_collections.ConfigDict:
    return _ablation.get_config("extra_features")
