"""Hyperparameter optimisation as meta-training: theta is Adam's log learning rate, betas, epsilon
and an inverse-time decay schedule, tuned by ES-Single on the digits MLP family."""

import ml_collections

import lopt
from meta_train.configs import default


def get_config() -> ml_collections.ConfigDict:
    config = default.mlp_config()
    config.optimizer.architecture = "adam"
    config.optimizer.hyperparameters = lopt.get_optimizer(
        "adam", initial_learning_rate=1e-4, schedule="inverse_time"
    ).hyperparameters()
    # Few meta-parameters: a larger noise scale and outer step are safe and converge faster.
    config.estimator.sigma = 0.1
    config.outer.learning_rate = 3e-2
    config.num_outer_steps = 300
    return config
