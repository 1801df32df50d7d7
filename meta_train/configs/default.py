"""The default meta-training run (``lopt meta-train`` with no ``--config``) and the schema of every
config.

``get_config()`` declares every key a config may set, with the default run's values: ES-Single,
the normalized rule with the pretrained recipe's step size (learning rate 1e-2 outside the rule,
warm-up cosine) and μP relative to fan-in 32; meta-losses on outer-valid batches, relative to
each problem's initial loss; reparameterized-weight augmentation; outer Adam 1e-3, warm-up cosine;
on the digits MLP family (its cost: README.md, "Two commands"). ``config_flags.load_config``
checks every config against it: a config starts from it, or from a config derived from it, and
changes what it says it changes.

``mlp_config()`` is the per-parameter MLP with an Adam base step (the default before the
normalized rule); the estimator, architecture and accelerator configs start from it.
"""

import ml_collections

import lopt

# Reparameterization scales (w' = w / s): the rule's step in the original weights is s * lr, so
# this range trains it across a decade of effective learning rates around its default.
AUGMENTATION_RANGE = (0.3, 3.0)


def task_group(
    family: str,
    num_pairs: int,
    weight: float = 1.0,
    overrides: dict | None = None,
    augmentation: str = "none",
    augmentation_range: tuple[float, float] = (1e-3, 1e3),
) -> ml_collections.ConfigDict:
    """One entry of ``config.groups``: a registered family with its static overrides, its number
    of antithetic pairs and its weight in the combined estimate. Task augmentation: ``"none"``, or
    reparameterized weights w' = w / s with s log-uniform in ``augmentation_range``, one s for all
    weights (``"global"``), one per tensor (``"tensor"``) or per parameter (``"parameter"``)."""
    group = ml_collections.ConfigDict()
    group.family = family
    group.weight = weight
    group.num_pairs = num_pairs
    group.overrides = ml_collections.ConfigDict(overrides or {})
    group.augmentation = augmentation
    group.augmentation_range = tuple(augmentation_range)
    return group


def get_config() -> ml_collections.ConfigDict:
    """The default run, at its budget (500 outer steps, 16 pairs, T = 200); every key a config may
    set (the schema)."""
    config = ml_collections.ConfigDict()
    config.seed = 0
    config.num_outer_steps = 500
    # "": theta from optimizer.init_meta_params; else an export directory or a shipped pretrained
    # name whose theta the run starts from (meta_train.warm_start).
    config.init_from = ""
    # 0: as many local devices as split every group's pairs evenly. On a CPU, `lopt meta-train`
    # makes one XLA device per core (unless XLA_FLAGS sets a count), so the pairs use every core.
    config.num_devices = 0
    # Pairs vectorised together on a device; chunks run one after another. 0: automatic, one pair
    # at a time on a CPU (its working set stays in cache), all at once on an accelerator;
    # -1: all at once. Results do not depend on it.
    config.pairs_per_chunk = 0
    # What the estimator differentiates: the inner training loss ("train"), the same batch
    # re-evaluated after the step ("reeval"), or a fresh batch of the outer-valid split. Judged on
    # the outer-valid split: with the training loss as the meta-objective the rule fitted the
    # small digits sets further and its held-out test loss was higher (README.md, "Two commands").
    config.meta_loss = "outer_valid"
    # "initial": each inner problem's meta-losses are divided by its loss at initialisation, so
    # families whose losses differ in scale weigh alike; "none": unscaled.
    config.meta_loss_scale = "initial"
    # w in [0, 1]: the meta-loss is (1 - w) * meta_loss + w * the step's training loss.
    config.meta_loss_train_weight = 0.0

    config.optimizer = ml_collections.ConfigDict()
    config.optimizer.architecture = "normalized"
    # The rule's own hyperparameters only (lopt.get_optimizer(architecture, **hyperparameters)).
    config.optimizer.hyperparameters = lopt.get_optimizer(
        "normalized", mup_base_fan_in=32
    ).hyperparameters()
    # The step size of a rule with the learning rate outside it (architecture "normalized"):
    # update = -lr(t) * (direction + weight_decay * params), lr(t) following the schedule
    # ("cosine": warm-up over warmup_fraction of the inner horizon, then cosine decay to 0 at it;
    # or "constant"); lopt.StepSize, exported with the rule. Rules that learn their step size in
    # theta (mlp, lstm, adam, sgdm: e.g. the MLP's Adam base log_lr) do not use these keys.
    for key, value in lopt.StepSize(learning_rate=1e-2)._asdict().items():
        setattr(config.optimizer, key, value)

    config.estimator = ml_collections.ConfigDict()
    config.estimator.name = "es_single"
    config.estimator.window = 10  # K: inner steps per outer step
    config.estimator.sigma = 0.01
    config.estimator.horizon = 200  # T, or T_max when min_horizon > 0
    config.estimator.min_horizon = 0  # > 0: T ~ log-uniform in [min_horizon, horizon] per problem
    # A horizon shorter than the window restarts inner problems inside every window: refused
    # unless this says it is meant.
    config.estimator.allow_short_horizon = False
    config.estimator.stagger = True
    config.estimator.resample_every = 1  # GPES only
    # "sign": each pair's estimate weighs by the sign of its loss difference (VeLO's shaping).
    config.estimator.shaping = "none"

    # Task groups: one static task configuration each, with its own particles. The estimate is
    # the weight-averaged estimate of the groups.
    config.groups = ml_collections.ConfigDict()
    config.groups.digits = task_group(
        "mlp_digits", num_pairs=16, augmentation="global", augmentation_range=AUGMENTATION_RANGE
    )

    config.outer = ml_collections.ConfigDict()
    config.outer.optimizer = "adam"
    config.outer.learning_rate = 1e-3
    config.outer.clip_norm = 1.0
    config.outer.schedule = "cosine"
    config.outer.warmup_steps = 50
    # > 0: export and evaluate an exponential moving average of theta (outer.track_theta_average)
    config.outer.average_decay = 0.0

    config.log_every = 10
    config.checkpoint_every = 100
    config.keep_checkpoints = 3
    config.export_every = 200
    config.progress = True

    # Periodic held-out evaluation: the current optimizer trains a few tasks of a held-out suite.
    config.eval = ml_collections.ConfigDict()
    config.eval.every = 100
    config.eval.suite = "default"
    config.eval.num_tasks = 2
    config.eval.num_steps = 200  # 0: each task's own horizon

    # The held-out comparison against Adam at the end of the run.
    config.comparison = ml_collections.ConfigDict()
    config.comparison.suite = ""  # "": the suite of eval.suite
    config.comparison.num_tasks = 3  # 0: none
    config.comparison.num_steps = 0  # 0: each task's own horizon
    config.comparison.seeds = 3
    config.comparison.adam_learning_rates = (1e-3, 1e-2)
    return config


def mlp_config() -> ml_collections.ConfigDict:
    """``get_config()`` with the per-parameter MLP and an Adam base step, the training loss as
    the meta-loss, unscaled, no augmentation, and a constant outer learning rate 3e-3."""
    config = get_config()
    config.meta_loss = "train"
    config.meta_loss_scale = "none"
    config.optimizer.architecture = "mlp"
    config.optimizer.hyperparameters = lopt.get_optimizer("mlp", base="adam").hyperparameters()
    config.optimizer.learning_rate = lopt.StepSize().learning_rate  # unused by the MLP
    config.groups.digits = task_group("mlp_digits", num_pairs=16)
    config.outer.learning_rate = 3e-3
    config.outer.schedule = "constant"
    config.outer.warmup_steps = 0
    return config
