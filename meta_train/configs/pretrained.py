"""The shipped pretrained optimizer (``lopt.pretrained()``): the normalized rule meta-trained with
ES-Single on five task groups (three datasets, MLPs of two widths and a conv net), with
reparameterized-weight augmentation, log-uniform horizons in [50, 500] and each problem's
meta-loss relative to its initial loss. Its budget and wall time are in
``lopt/weights/normalized-v1/training.json``.

    lopt meta-train --config pretrained --workdir runs/pretrained
"""

import ml_collections

import lopt
from meta_train.configs import default

# Reparameterization scales (the default run's; see there).
AUGMENTATION_RANGE = default.AUGMENTATION_RANGE


def get_config() -> ml_collections.ConfigDict:
    config = default.get_config()
    config.meta_loss = "train"  # what normalized-v1 was trained with
    config.num_outer_steps = 3000
    config.meta_loss_scale = "initial"

    config.optimizer.architecture = "normalized"
    config.optimizer.hyperparameters = lopt.get_optimizer(
        "normalized", mup_base_fan_in=32
    ).hyperparameters()
    config.optimizer.learning_rate = 1e-2

    config.estimator.window = 20
    config.estimator.horizon = 500
    config.estimator.min_horizon = 50

    config.groups = ml_collections.ConfigDict()
    config.groups.digits = default.task_group(
        "mlp_digits", 8, augmentation="global", augmentation_range=AUGMENTATION_RANGE
    )
    config.groups.digits_shallow = default.task_group(
        "mlp_digits",
        8,
        overrides={"hidden": (64,)},
        augmentation="tensor",
        augmentation_range=AUGMENTATION_RANGE,
    )
    config.groups.mnist1d = default.task_group(
        "mlp_mnist1d", 8, augmentation="global", augmentation_range=AUGMENTATION_RANGE
    )
    config.groups.gmm = default.task_group(
        "mlp_gmm", 8, augmentation="parameter", augmentation_range=(0.5, 2.0)
    )
    config.groups.conv = default.task_group("conv_digits", 8)

    config.outer.learning_rate = 1e-3
    config.outer.schedule = "cosine"
    config.outer.warmup_steps = 100

    config.checkpoint_every = 100
    config.export_every = 250
    config.eval.every = 500
    config.eval.num_steps = 500
    config.comparison.num_tasks = 0
    return config
