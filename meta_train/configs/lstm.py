"""The MLP run (``default.mlp_config()``) with the coordinate-wise LSTM optimizer instead of the
per-parameter MLP."""

import ml_collections

import lopt
from meta_train.configs import default


def get_config() -> ml_collections.ConfigDict:
    config = default.mlp_config()
    config.optimizer.architecture = "lstm"
    config.optimizer.hyperparameters = lopt.get_optimizer("lstm").hyperparameters()
    return config
