"""The MLP run (``default.mlp_config()``) with PES: fresh noise every window, accumulated until the
inner problem ends."""

import ml_collections

from meta_train.configs import default


def get_config() -> ml_collections.ConfigDict:
    config = default.mlp_config()
    config.estimator.name = "pes"
    return config
