"""The tiny meta-training run of the workdir, health and fault-injection tests: the learnable-Adam
config on a 4-dim quadratic, 2 pairs on one device, T = 12, K = 3, logged every step, no held-out
evaluation; it compiles in seconds."""

from typing import Any

import ml_collections

from meta_train import config_flags

SETTINGS = {
    "groups.digits.family": "quadratic",
    "groups.digits.overrides.dim": "4",
    "groups.digits.num_pairs": "2",
    "estimator.horizon": "12",
    "estimator.window": "3",
    "num_outer_steps": "4",
    "num_devices": "1",
    "log_every": "1",
    "checkpoint_every": "2",
    "export_every": "100",
    "eval.num_tasks": "0",
    "comparison.num_tasks": "0",
    "progress": "false",
}


def tiny_argv(changes: dict[str, Any] | None = None) -> list[str]:
    """``lopt meta-train`` arguments of the tiny run, with ``changes`` (dotted key: value)."""
    settings = SETTINGS | (changes or {})
    return ["--config", "hpo_adam", *(f"--config.{key}={value}" for key, value in settings.items())]


def tiny_config(changes: dict[str, Any] | None = None) -> ml_collections.ConfigDict:
    """The config of ``tiny_argv(changes)``."""
    config = config_flags.load_config("hpo_adam")
    for key, value in (SETTINGS | (changes or {})).items():
        config_flags.apply_override(config, key, str(value))
    return config
