"""A meta-training run that compiles in seconds: learnable Adam (``hpo_adam``) on a 4-dim
quadratic, 2 pairs on one device, T = 12, K = 3, 4 outer steps, logged every step, no held-out
evaluation. A smoke test of an install or an accelerator, and the tests' workdir run.

    lopt meta-train --config tiny --workdir runs/tiny
"""

import ml_collections

from meta_train.configs import hpo_adam


def get_config() -> ml_collections.ConfigDict:
    config = hpo_adam.get_config()
    config.groups.digits.family = "quadratic"
    config.groups.digits.overrides = ml_collections.ConfigDict({"dim": 4})
    config.groups.digits.num_pairs = 2
    config.estimator.horizon = 12
    config.estimator.window = 3
    config.num_outer_steps = 4
    config.num_devices = 1
    config.log_every = 1
    config.checkpoint_every = 2
    config.export_every = 100
    config.eval.num_tasks = 0
    config.comparison.num_tasks = 0
    config.progress = False
    return config
