"""Learned optimizers: a normalized update rule with the learning rate outside it, per-parameter MLP
and LSTM networks, and learnable hand-designed baselines, with export to optax.

Every optimizer is a frozen dataclass of hyperparameters with pure functions around a
meta-parameter pytree theta: ``init_meta_params(key)``, ``init(theta, params, num_steps)``,
``update(theta, state, grads, params, loss)``. ``to_optax`` / ``save`` / ``load`` turn them into
optax transforms.
"""

from lopt.base import LearnedOptimizer
from lopt.export import (
    CorruptExportError,
    ExportError,
    NewerFormatError,
    NotAnExportError,
    load,
    load_optimizer,
    load_rule,
    rule_transform,
    save,
    to_optax,
    with_learning_rate,
)
from lopt.hand_designed import AdamState, LearnableAdam, LearnableSGDM, SGDMState
from lopt.lstm import LSTMOptimizer, LSTMOptState
from lopt.mlp import MLPOptimizer, MLPOptState
from lopt.normalized import NormalizedOptimizer, NormalizedOptState
from lopt.registry import UnknownArchitectureError, architecture_names, get_optimizer, register
from lopt.shipped import pretrained, pretrained_info, pretrained_names, pretrained_path

__all__ = [
    "AdamState",
    "CorruptExportError",
    "ExportError",
    "LSTMOptState",
    "LSTMOptimizer",
    "LearnableAdam",
    "LearnableSGDM",
    "LearnedOptimizer",
    "MLPOptState",
    "MLPOptimizer",
    "NewerFormatError",
    "NormalizedOptState",
    "NormalizedOptimizer",
    "NotAnExportError",
    "SGDMState",
    "UnknownArchitectureError",
    "architecture_names",
    "get_optimizer",
    "load",
    "load_optimizer",
    "load_rule",
    "pretrained",
    "pretrained_info",
    "pretrained_names",
    "pretrained_path",
    "register",
    "rule_transform",
    "save",
    "to_optax",
    "with_learning_rate",
]
