"""The default run with truncated ES: fresh noise every window, no accumulation (biased)."""

import ml_collections

from meta_train.configs import default


def get_config() -> ml_collections.ConfigDict:
    config = default.get_config()
    config.estimator.name = "tes"
    return config
