"""normalized-v2's recipe: normalized-v1's, continued from v1's theta and judged on data the inner
training never sees.

What changes from ``pretrained`` (v1):

- the meta-loss is a fresh outer-valid batch after each step (v1: the training batch), still
  relative to each problem's initial loss;
- two more task groups where the training and held-out losses part ways: digits with a
  200-example training set (it can be memorized) and MNIST-1D with 20% of its labels redrawn
  (a test-loss floor that fitting the training labels cannot pass);
- the rule can shrink its step: ``step_gain`` (``lopt.NormalizedOptimizer``), a per-tensor gain
  whose exponent starts at 0, where v1's function is unchanged;
- decoupled weight decay at AdamW's optax default, 1e-4 (times the learning rate);
- theta starts from ``normalized-v1`` (``init_from``), so this run's compute adds to v1's.

    lopt meta-train --config pretrained_v2 --workdir runs/pretrained_v2
"""

import ml_collections

import lopt
from meta_train.configs import default, pretrained


def get_config() -> ml_collections.ConfigDict:
    config = pretrained.get_config()
    config.init_from = "normalized-v1"
    config.meta_loss = "outer_valid"
    config.num_outer_steps = 4000

    config.optimizer.hyperparameters = lopt.get_optimizer(
        "normalized", mup_base_fan_in=32, step_gain=True
    ).hyperparameters()
    config.optimizer.learning_rate = 1e-2
    config.optimizer.weight_decay = 1e-4

    config.groups.digits_small = default.task_group(
        "mlp_digits",
        8,
        overrides={"train_size": 200},
        augmentation="global",
        augmentation_range=pretrained.AUGMENTATION_RANGE,
    )
    config.groups.mnist1d_noisy = default.task_group(
        "mlp_mnist1d",
        8,
        overrides={"label_noise": 0.2},
        augmentation="global",
        augmentation_range=pretrained.AUGMENTATION_RANGE,
    )

    # Continued from a trained theta: a short warm-up, then cosine decay over the run.
    config.outer.warmup_steps = 50
    config.export_every = 100
    config.eval.every = 250
    return config
