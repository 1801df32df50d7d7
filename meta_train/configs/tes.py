"""The MLP run (``default.mlp_config()``) with truncated ES: fresh noise every window, no
accumulation (biased)."""

import ml_collections

from meta_train.configs import default


def get_config() -> ml_collections.ConfigDict:
    config = default.mlp_config()
    config.estimator.name = "tes"
    return config
