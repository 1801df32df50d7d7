"""Named task families and held-out suites.

``get_family(name, **overrides)`` builds a family from its registered defaults (which the overrides
replace, e.g. ``get_family("mlp_digits", hidden=(64,))``). ``get_suite(name)`` builds a held-out
suite: a list of ``HeldOutTask``.

Why held-out tasks are never sampled in meta-training, by construction:

1. every held-out task's family has a static configuration (architecture, width, depth,
   activation, batch size or dataset) different from the default meta-training family
   ``mlp_digits`` (the tests check it), so it is a different compiled task group; and
2. every held-out task's dynamic configuration uses seeds at or above ``SAMPLED_SEED_END``
   (``tasks.base``), which ``family.sample`` never draws, with unit init scale and identity labels.

Families are declared as specs (a builder and its defaults) so ``format_listing`` can describe
them without loading any data.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable
from typing import Any, NamedTuple

import jax.numpy as jnp

from tasks import augment, dynamical, image, language, quadratic
from tasks.base import SAMPLED_SEED_END, DynamicConfig, TaskFamily

DEFAULT_FAMILY = "mlp_digits"


class FamilySpec(NamedTuple):
    """A registered family: ``build(**{**defaults, **overrides})`` makes it."""

    build: Callable[..., TaskFamily]
    defaults: dict[str, Any]
    description: str


class HeldOutTask(NamedTuple):
    """One concrete held-out task: train ``family.task(config)`` for ``num_steps`` steps."""

    name: str
    family: TaskFamily
    config: DynamicConfig
    num_steps: int


class SuiteEntry(NamedTuple):
    """Declaration of a held-out task: a registered family, its overrides and the horizon."""

    name: str
    family: str
    overrides: dict[str, Any]
    num_steps: int
    shift: str


FAMILIES: dict[str, FamilySpec] = {
    "mlp_digits": FamilySpec(
        image.mlp_family,
        {"dataset": "digits", "hidden": (32, 32), "activation": "relu", "batch_size": 128},
        "MLP 64-32-32-10 on 8x8 digits (the default meta-training family)",
    ),
    "mlp_mnist1d": FamilySpec(
        image.mlp_family,
        {"dataset": "mnist1d", "hidden": (32, 32), "activation": "relu", "batch_size": 128},
        "MLP 40-32-32-10 on MNIST-1D",
    ),
    "mlp_image": FamilySpec(
        image.mlp_family,
        {
            "dataset": "fashion_mnist",
            "image_size": 8,
            "grayscale": True,
            "hidden": (32, 32),
            "activation": "relu",
            "batch_size": 128,
        },
        "MLP on any prepared TFDS image dataset (default Fashion-MNIST at 8x8)",
    ),
    "conv_digits": FamilySpec(
        image.conv_family,
        {"dataset": "digits", "channels": (8, 16), "activation": "relu", "batch_size": 128},
        "conv net (two stride-2 3x3 convs, mean pool, dense) on 8x8 digits",
    ),
    "conv_image": FamilySpec(
        image.conv_family,
        {"dataset": "mnist", "channels": (16, 32, 32), "activation": "relu", "batch_size": 128},
        "conv net on any prepared 28x28 TFDS image dataset (default MNIST)",
    ),
    "lm_markov": FamilySpec(
        language.lm_family,
        {"source": "markov", "cell": "lstm", "hidden": 32, "seq_len": 32, "batch_size": 32},
        "character LSTM on a synthetic sparse-Markov-chain language (32 symbols)",
    ),
    "lm_text": FamilySpec(
        language.lm_family,
        {"source": "auto", "cell": "lstm", "hidden": 64, "seq_len": 64, "batch_size": 32},
        "character LSTM on tiny_shakespeare if prepared, else the Markov language",
    ),
    "quadratic": FamilySpec(
        quadratic.quadratic_family,
        {"dim": 16, "max_condition": 100.0},
        "quadratic with exact gradient, condition <= 100",
    ),
    "noisy_quadratic": FamilySpec(
        quadratic.noisy_quadratic_family,
        {"dim": 16, "max_condition": 100.0, "noise_range": (0.1, 1.0)},
        "quadratic with a noisy target per minibatch (unbiased gradient noise)",
    ),
}

_DEFAULT_STEPS = 500
_LONG_STEPS = 2000

SUITES: dict[str, tuple[SuiteEntry, ...]] = {
    "default": (
        SuiteEntry("mlp_digits_wide", "mlp_digits", {"hidden": (64, 64)}, _DEFAULT_STEPS, "width"),
        SuiteEntry(
            "mlp_digits_tanh", "mlp_digits", {"activation": "tanh"}, _DEFAULT_STEPS, "activation"
        ),
        SuiteEntry("mlp_mnist1d", "mlp_mnist1d", {}, _DEFAULT_STEPS, "dataset"),
        SuiteEntry("conv_digits", "conv_digits", {}, _DEFAULT_STEPS, "architecture"),
        SuiteEntry(
            "mlp_digits_b64_long", "mlp_digits", {"batch_size": 64}, _LONG_STEPS, "horizon (4x)"
        ),
    ),
    "tiny": (
        SuiteEntry(
            "mlp_digits_tiny", "mlp_digits", {"hidden": (8,), "batch_size": 32}, 30, "width"
        ),
        SuiteEntry("quadratic_d8", "quadratic", {"dim": 8}, 30, "architecture"),
    ),
    "shifts": (
        SuiteEntry(
            "mlp_digits_wide128", "mlp_digits", {"hidden": (128, 128)}, _DEFAULT_STEPS, "width"
        ),
        SuiteEntry("mlp_digits_narrow8", "mlp_digits", {"hidden": (8, 8)}, _DEFAULT_STEPS, "width"),
        SuiteEntry(
            "mlp_digits_deep3", "mlp_digits", {"hidden": (32, 32, 32)}, _DEFAULT_STEPS, "depth"
        ),
        SuiteEntry("mlp_digits_shallow1", "mlp_digits", {"hidden": (64,)}, _DEFAULT_STEPS, "depth"),
        SuiteEntry(
            "mlp_digits_gelu", "mlp_digits", {"activation": "gelu"}, _DEFAULT_STEPS, "activation"
        ),
        SuiteEntry(
            "mlp_digits_tanh", "mlp_digits", {"activation": "tanh"}, _DEFAULT_STEPS, "activation"
        ),
        SuiteEntry(
            "mlp_digits_b32", "mlp_digits", {"batch_size": 32}, _DEFAULT_STEPS, "batch size"
        ),
        SuiteEntry("mlp_mnist1d", "mlp_mnist1d", {}, _DEFAULT_STEPS, "dataset"),
        SuiteEntry("conv_digits", "conv_digits", {}, _DEFAULT_STEPS, "architecture"),
        SuiteEntry("lm_markov", "lm_markov", {}, _DEFAULT_STEPS, "architecture (recurrent LM)"),
        SuiteEntry(
            "mlp_digits_b64_long",
            "mlp_digits",
            {"batch_size": 64},
            5 * _DEFAULT_STEPS,
            "horizon (5x)",
        ),
    ),
}


class UnknownNameError(KeyError):
    """A family or suite name that is not registered."""

    def __str__(self) -> str:
        return str(self.args[0])


def family_names() -> list[str]:
    """Registered family names, sorted."""
    return sorted(FAMILIES)


def suite_names() -> list[str]:
    """Registered suite names, sorted."""
    return sorted(SUITES)


def family_spec(name: str) -> FamilySpec:
    """The spec registered as ``name``; a clear error naming the known families otherwise."""
    if name not in FAMILIES:
        raise UnknownNameError(
            f"unknown task family {name!r}; known families: {', '.join(family_names())} "
            "(see `lopt tasks list`)"
        )
    return FAMILIES[name]


def family_options(name: str) -> dict[str, Any]:
    """Every keyword ``get_family(name, ...)`` accepts, with its registered default."""
    spec = family_spec(name)
    parameters = inspect.signature(spec.build).parameters
    return {key: p.default for key, p in parameters.items()} | spec.defaults


def get_family(name: str, **overrides: Any) -> TaskFamily:
    """The family registered as ``name`` with its defaults replaced by ``overrides``."""
    spec = family_spec(name)
    options = family_options(name)
    unknown = sorted(set(overrides) - set(options))
    if unknown:
        raise TypeError(
            f"task family {name!r} has no option {', '.join(map(repr, unknown))}; "
            f"its options are: {', '.join(options)}"
        )
    return spec.build(**(spec.defaults | overrides))


def held_out_config(family: TaskFamily, index: int) -> DynamicConfig:
    """The family's default dynamic configuration with seeds ``SAMPLED_SEED_END + index``, which
    ``family.sample`` never draws (every registered family's config has these two seeds). A
    reparameterized family gets its base's held-out configuration with unit scales."""
    if isinstance(family, augment.ReparameterizedFamily):
        return family.default_config()._replace(base=held_out_config(family.base, index))
    seed = jnp.asarray(SAMPLED_SEED_END + index, jnp.uint32)
    return family.default_config()._replace(init_seed=seed, data_seed=seed)


def suite_entries(name: str) -> tuple[SuiteEntry, ...]:
    """The declarations of suite ``name``, without building anything."""
    if name not in SUITES:
        raise UnknownNameError(f"unknown suite {name!r}; known suites: {', '.join(suite_names())}")
    return SUITES[name]


def get_suite(name: str) -> list[HeldOutTask]:
    """The held-out tasks of suite ``name`` (loads their datasets, preparing built-ins once)."""
    tasks = []
    for index, entry in enumerate(suite_entries(name)):
        family = get_family(entry.family, **entry.overrides)
        tasks.append(
            HeldOutTask(entry.name, family, held_out_config(family, index), entry.num_steps)
        )
    return tasks


def _format_value(value: Any) -> str:
    if isinstance(value, tuple):
        return "(" + ",".join(map(str, value)) + ("," if len(value) == 1 else "") + ")"
    return str(value)


def _format_options(options: dict[str, Any]) -> str:
    return " ".join(f"{key}={_format_value(value)}" for key, value in options.items())


def _table(rows: list[tuple[str, ...]]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return [line.rstrip() for line in lines]


def format_listing() -> str:
    """A readable listing of families (static defaults), suites (tasks, horizons) and the
    dynamical systems, for ``lopt tasks list``. Loads no data."""
    family_rows = [("family", "static config (defaults; override with get_family)", "what")]
    for name in family_names():
        spec = FAMILIES[name]
        family_rows.append((name, _format_options(spec.defaults), spec.description))
    lines = ["Task families", "", *_table(family_rows), ""]
    lines.append(
        "Dynamic config (sampled per particle at every reset): init seed, data seed, and for "
        "classifiers and LMs a log-uniform init scale in [0.5, 2]; classifiers also a label "
        "permutation; quadratics log-scales, centre and noise."
    )
    lines += ["", "Held-out suites (never sampled in meta-training)"]
    for suite in suite_names():
        rows = [("task", "family", "overrides", "steps", "shift")]
        for entry in SUITES[suite]:
            rows.append(
                (
                    entry.name,
                    entry.family,
                    _format_options(entry.overrides) or "-",
                    str(entry.num_steps),
                    entry.shift,
                )
            )
        lines += ["", f"suite {suite!r}:", *_table(rows)]
    lines += ["", "Dynamical systems (meta_train.systems wraps them)", "", *_dynamical_listing()]
    return "\n".join(lines)


def _dynamical_listing() -> list[str]:
    system = dynamical.InfluenceBalancing()
    fields = _format_options(dataclasses.asdict(system))
    return [
        f"influence_balancing  {fields}  optimum theta* = {system.optimum():.4f} "
        "(tasks.dynamical.InfluenceBalancing; Tallec & Ollivier 2017)"
    ]
