"""Learned optimizers: a normalized update rule with the learning rate outside it, per-parameter MLP
and LSTM networks, and learnable hand-designed baselines, with export to optax.

Every optimizer is a frozen dataclass of hyperparameters with pure functions around a
meta-parameter pytree theta: ``init_meta_params(key)``, ``init(theta, params, num_steps)``,
``update(theta, state, grads, params, loss)``. A rule with the learning rate outside it
(``LearnedRule``) is a direction, ``scale_by_rule(theta, rule)``; ``with_step_size`` applies a
``StepSize`` around it. ``to_optax`` / ``save`` / ``load`` turn them into optax transforms.
"""

from lopt.base import LearnedOptimizer, LearnedRule
from lopt.export import (
    CorruptExportError,
    ExportError,
    NewerFormatError,
    NotAnExportError,
    load,
    load_optimizer,
    load_rule,
    load_step_size,
    save,
    scale_by_rule,
    to_optax,
)
from lopt.hand_designed import AdamState, LearnableAdam, LearnableSGDM, SGDMState
from lopt.lstm import LSTMOptimizer, LSTMOptState
from lopt.mlp import MLPOptimizer, MLPOptState
from lopt.normalized import NormalizedOptimizer, NormalizedOptState
from lopt.registry import UnknownArchitectureError, architecture_names, get_optimizer, register
from lopt.shipped import pretrained, pretrained_info, pretrained_names, pretrained_path
from lopt.step_size import StepSize, StepSizeState, with_step_size

__all__ = [
    "AdamState",
    "CorruptExportError",
    "ExportError",
    "LSTMOptState",
    "LSTMOptimizer",
    "LearnableAdam",
    "LearnableSGDM",
    "LearnedOptimizer",
    "LearnedRule",
    "MLPOptState",
    "MLPOptimizer",
    "NewerFormatError",
    "NormalizedOptState",
    "NormalizedOptimizer",
    "NotAnExportError",
    "SGDMState",
    "StepSize",
    "StepSizeState",
    "UnknownArchitectureError",
    "architecture_names",
    "get_optimizer",
    "load",
    "load_optimizer",
    "load_rule",
    "load_step_size",
    "pretrained",
    "pretrained_info",
    "pretrained_names",
    "pretrained_path",
    "register",
    "save",
    "scale_by_rule",
    "to_optax",
    "with_step_size",
]
