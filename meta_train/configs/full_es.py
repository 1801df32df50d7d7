"""The MLP run (``default.mlp_config()``) with full ES: one estimate per whole inner problem
(K = T), so an outer step costs T inner steps; fewer outer steps for about the same inner-step
budget."""

import ml_collections

from meta_train.configs import default


def get_config() -> ml_collections.ConfigDict:
    config = default.mlp_config()
    config.estimator.name = "full_es"
    config.estimator.window = config.estimator.horizon
    config.estimator.stagger = False
    config.num_outer_steps = max(1, config.num_outer_steps * 10 // config.estimator.horizon)
    config.log_every = 1
    config.checkpoint_every = 5
    config.export_every = 10
    config.eval.every = 10
    return config
