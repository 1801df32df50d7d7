"""The tiny meta-training run of the workdir, health and fault-injection tests: the shipped
``tiny`` config (learnable Adam on a 4-dim quadratic, 2 pairs, T = 12, K = 3, 4 outer steps); it
compiles in seconds."""

from typing import Any

import ml_collections

from meta_train import config_flags


def tiny_argv(changes: dict[str, Any] | None = None) -> list[str]:
    """``lopt meta-train`` arguments of the tiny run, with ``changes`` (dotted key: value)."""
    return [
        "--config",
        "tiny",
        *(f"--config.{key}={value}" for key, value in (changes or {}).items()),
    ]


def tiny_config(changes: dict[str, Any] | None = None) -> ml_collections.ConfigDict:
    """The config of ``tiny_argv(changes)``."""
    config = config_flags.load_config("tiny")
    for key, value in (changes or {}).items():
        config_flags.apply_override(config, key, str(value))
    return config
