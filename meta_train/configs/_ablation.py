"""Ablations of the pretrained recipe, each one element changed, at a reduced equal budget; one
config file each (``ablation_<name>.py``):

    lopt meta-train --config ablation_<name> --workdir runs/ablation_<name>

``reference`` is the pretrained recipe itself at this budget; ``mlp`` swaps the normalized rule
for the per-parameter MLP with an Adam base step (the previous default); ``no_augmentation``
drops the reparameterization; ``one_family`` meta-trains on the digits MLP alone (same number
of pairs); ``fixed_horizon`` uses one horizon of 200 instead of log-uniform in [50, 500].
Options that later recipes or Celo2 add, one at a time: ``step_gain`` (the rule's learned
per-tensor gain, ``lopt.NormalizedOptimizer``), ``weight_decay`` (decoupled, 1e-4 as AdamW's
optax default), ``orthogonalize`` (Newton–Schulz directions for matrices), ``adam_vectors``
(Adam's direction, beta2 0.95, for biases and scales) and ``extra_features`` (clipped
gradient, rsqrt(v), Adafactor-factored g / sqrt(v)).
``benchmarks/ablations.py`` runs them all and evaluates each on the generalization suite.
"""

import ml_collections

import lopt
from meta_train.configs import default, pretrained

ABLATIONS = (
    "reference",
    "mlp",
    "no_augmentation",
    "one_family",
    "fixed_horizon",
    "step_gain",
    "weight_decay",
    "orthogonalize",
    "adam_vectors",
    "extra_features",
)
RULE_OPTIONS = {  # ablation: the normalized rule's hyperparameter it switches on
    "step_gain": "step_gain",
    "orthogonalize": "orthogonalize",
    "adam_vectors": "adam_for_vectors",
    "extra_features": "extra_features",
}
NUM_OUTER_STEPS = 200


def get_config(name: str) -> ml_collections.ConfigDict:
    """The pretrained recipe at ``NUM_OUTER_STEPS`` with the change that ``name`` names."""
    if name not in ABLATIONS:
        raise ValueError(f"unknown ablation {name!r}; choose one of {ABLATIONS}")
    config = pretrained.get_config()
    config.num_outer_steps = NUM_OUTER_STEPS
    config.outer.warmup_steps = 20
    config.eval.num_tasks = 0
    config.export_every = NUM_OUTER_STEPS
    if name == "mlp":
        config.optimizer.architecture = "mlp"
        config.optimizer.hyperparameters = lopt.get_optimizer("mlp", base="adam").hyperparameters()
    elif name == "no_augmentation":
        for group in config.groups.values():
            group.augmentation = "none"
    elif name == "one_family":
        pairs = sum(group.num_pairs for group in config.groups.values())
        digits = config.groups.digits
        config.groups = ml_collections.ConfigDict()
        config.groups.digits = default.task_group(
            "mlp_digits",
            pairs,
            augmentation=digits.augmentation,
            augmentation_range=tuple(digits.augmentation_range),
        )
    elif name == "fixed_horizon":
        config.estimator.horizon = 200
        config.estimator.min_horizon = 0
    elif name == "weight_decay":
        config.optimizer.weight_decay = 1e-4
    elif name in RULE_OPTIONS:
        config.optimizer.hyperparameters[RULE_OPTIONS[name]] = True
    return config
