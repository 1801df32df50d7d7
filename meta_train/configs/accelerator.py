"""An accelerator-sized run: thousands of inner trainings (4096 per group) on two task groups,
with horizons sampled per inner problem. Too big for a CPU; made for one or more GPUs/TPUs."""

import ml_collections

from meta_train.configs import default


def get_config() -> ml_collections.ConfigDict:
    config = default.mlp_config()
    config.num_outer_steps = 5000
    config.estimator.horizon = 1000
    config.estimator.min_horizon = 200
    config.groups.digits.num_pairs = 2048
    config.groups.mnist1d = default.task_group("mlp_mnist1d", num_pairs=2048)
    config.outer.learning_rate = 1e-3
    config.outer.schedule = "cosine"
    config.outer.warmup_steps = 100
    config.checkpoint_every = 250
    config.export_every = 500
    config.eval.every = 500
    config.eval.num_tasks = 5
    config.comparison.num_tasks = 5
    return config
