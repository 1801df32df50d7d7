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
import importlib
import importlib.util
import inspect
import os
import sys
import types
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax.numpy as jnp

from tasks import augment, dynamical, image, language, quadratic, residual, synthetic, transformer
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
    "mlp_gmm": FamilySpec(
        synthetic.gmm_family,
        {
            "dim": 16,
            "num_classes": 4,
            "components": 2,
            "separation": 3.0,
            "hidden": (32, 32),
            "activation": "relu",
            "batch_size": 128,
        },
        "MLP on Gaussian-mixture classification generated in jit (mixture drawn per data seed)",
    ),
    "mlp_tabular": FamilySpec(
        image.mlp_family,
        {"dataset": "breast_cancer", "hidden": (32, 32), "activation": "relu", "batch_size": 128},
        "MLP on a scikit-learn tabular set (breast_cancer 30-d/2 classes, wine 13-d/3 classes)",
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
    "lm_markov_transformer": FamilySpec(
        transformer.transformer_lm_family,
        {
            "source": "markov",
            "width": 32,
            "num_blocks": 2,
            "num_heads": 2,
            "seq_len": 32,
            "batch_size": 32,
        },
        "causal pre-LayerNorm transformer LM (learned positions) on the Markov language",
    ),
    "resmlp_mnist1d": FamilySpec(
        residual.residual_mlp_family,
        {
            "dataset": "mnist1d",
            "width": 64,
            "num_blocks": 2,
            "expansion": 2,
            "activation": "relu",
            "batch_size": 128,
        },
        "residual MLP with pre-LayerNorm blocks (learned scale and bias) on MNIST-1D",
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

# Options that set how a family samples its dynamic configurations, or where its files are, not
# which problem it is (see ``static_configuration``).
SAMPLING_OPTIONS = ("init_scale_range", "permute_labels", "split_seed", "data_dir")

_DEFAULT_STEPS = 500
_LONG_STEPS = 2000
# Shorter horizons where tuned Adam would otherwise reach the floor (the synthetic language's
# entropy rate) or memorize the small training set long before 2x the horizon.
_LM_STEPS = 200
_OVERFIT_STEPS = 300
# The held-out language models' text and minibatch: 8 windows of 16 tokens keep a step of the
# transformer near an MLP's cost, and 200 steps stay well above the entropy rate.
_LM_OVERRIDES = {"vocab_size": 128, "branching": 8, "seq_len": 16, "batch_size": 8}
# One block has attention, LayerNorm and residual connections as two do, with fewer tensors for
# every contender's trainer to compile (the benchmark's timing record: per_task_seconds).
_TRANSFORMER_OVERRIDES = {**_LM_OVERRIDES, "num_blocks": 1}

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
    # Held out from every task group of every shipped meta-training config, in the model and not
    # only in its data options (tests/test_generalization_suite.py checks it), and chosen to have
    # headroom: tuned Adam does not reach zero training loss long before 2x the horizon, except
    # in the "overfit" tasks, which are there for their test loss. "noisy": a test-loss floor no
    # optimizer can pass. The protocol scales the horizons.
    "generalization": (
        SuiteEntry(
            "mlp_mnist1d_w128",
            "mlp_mnist1d",
            {"hidden": (128, 128)},
            _DEFAULT_STEPS,
            "width (4x): MLP 128-128 on MNIST-1D",
        ),
        SuiteEntry(
            "mlp_mnist1d_tanh",
            "mlp_mnist1d",
            {"activation": "tanh"},
            _DEFAULT_STEPS,
            "activation (tanh) on MNIST-1D",
        ),
        SuiteEntry(
            "mlp_mnist1d_gelu_deep4",
            "mlp_mnist1d",
            {"hidden": (32, 32, 32, 32), "activation": "gelu"},
            _DEFAULT_STEPS,
            "depth (4 hidden layers) and activation (GELU) on MNIST-1D",
        ),
        SuiteEntry(
            "mlp_mnist1d_b32",
            "mlp_mnist1d",
            {"batch_size": 32},
            _DEFAULT_STEPS,
            "batch size (1/4) on MNIST-1D",
        ),
        SuiteEntry(
            "resmlp_mnist1d",
            "resmlp_mnist1d",
            {},
            _DEFAULT_STEPS,
            "architecture (residual MLP with LayerNorm)",
        ),
        SuiteEntry(
            "lm_markov128_transformer",
            "lm_markov_transformer",
            _TRANSFORMER_OVERRIDES,
            _LM_STEPS,
            "architecture (1-block causal transformer LM), 128-symbol Markov text",
        ),
        SuiteEntry(
            "lm_markov128_lstm",
            "lm_markov",
            _LM_OVERRIDES,
            _LM_STEPS,
            "architecture (LSTM language model), 128-symbol Markov text",
        ),
        SuiteEntry(
            "mlp_gmm_d32_c8",
            "mlp_gmm",
            {"dim": 32, "num_classes": 8},
            _DEFAULT_STEPS,
            "noisy: overlapping 32-d mixture, 8 classes (Bayes error > 0)",
        ),
        SuiteEntry(
            "conv_digits_noise20",
            "conv_digits",
            {"channels": (16, 32), "label_noise": 0.2},
            _DEFAULT_STEPS,
            "noisy: 20% of labels redrawn, conv net 16-32 on digits",
        ),
        SuiteEntry(
            "mlp_mnist1d_gelu_noise30",
            "mlp_mnist1d",
            {"hidden": (64, 64), "activation": "gelu", "label_noise": 0.3},
            _DEFAULT_STEPS,
            "noisy: 30% of labels redrawn, GELU MLP 64-64 on MNIST-1D",
        ),
        SuiteEntry(
            "conv_digits_n100",
            "conv_digits",
            {"channels": (16, 32), "train_size": 100},
            _OVERFIT_STEPS,
            "overfit: 100 training digits, conv net 16-32",
        ),
        SuiteEntry(
            "mlp_mnist1d_n1000_w128",
            "mlp_mnist1d",
            {"hidden": (128, 128), "train_size": 1000},
            _OVERFIT_STEPS,
            "overfit: 1000 training examples, MLP 128-128 on MNIST-1D",
        ),
        SuiteEntry(
            "mlp_mnist1d_w512",
            "mlp_mnist1d",
            {"hidden": (512, 512)},
            _DEFAULT_STEPS,
            "width (16x): MLP 512-512 on MNIST-1D",
        ),
    ),
}


class UnknownNameError(KeyError, ValueError):
    """A family or suite name that is not registered: a ``KeyError`` and a ``ValueError``, like
    ``lopt.UnknownArchitectureError``, so one ``except`` (and the CLI's exit status 2) covers an
    unknown name in either registry."""

    def __str__(self) -> str:
        return str(self.args[0])  # KeyError's own str() would quote the message


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


def checked_options(name: str, overrides: dict[str, Any]) -> dict[str, Any]:
    """Every option of family ``name`` with ``overrides`` applied; a clear error for an option
    the family does not have."""
    options = family_options(name)
    unknown = sorted(set(overrides) - set(options))
    if unknown:
        raise TypeError(
            f"task family {name!r} has no option {', '.join(map(repr, unknown))}; "
            f"its options are: {', '.join(options)}"
        )
    return options | overrides


def get_family(name: str, **overrides: Any) -> TaskFamily:
    """The family registered as ``name`` with its defaults replaced by ``overrides``."""
    spec = family_spec(name)
    checked_options(name, overrides)
    return spec.build(**(spec.defaults | overrides))


def _hashable(value: Any) -> Any:
    return tuple(map(_hashable, value)) if isinstance(value, list | tuple) else value


def static_configuration(name: str, overrides: dict[str, Any] | None = None) -> tuple:
    """What identifies family ``name`` with ``overrides`` as a problem, without building it: its
    builder and every option except those that only set how dynamic configurations are sampled
    or where files are (``SAMPLING_OPTIONS``). Equal results are the same static task
    configuration, e.g. ``("mlp_tabular", {"dataset": "digits"})`` and ``("mlp_digits", {})``."""
    options = checked_options(name, dict(overrides or {}))
    build = family_spec(name).build
    fixed = sorted((k, _hashable(v)) for k, v in options.items() if k not in SAMPLING_OPTIONS)
    return (f"{build.__module__}.{build.__qualname__}", tuple(fixed))


def held_out_config(family: TaskFamily, index: int) -> DynamicConfig:
    """The family's default dynamic configuration with seeds ``SAMPLED_SEED_END + index``, which
    ``family.sample`` never draws (every registered family's config has these two seeds). A
    reparameterized family gets its base's held-out configuration with unit scales."""
    if isinstance(family, augment.ReparameterizedFamily):
        return family.default_config()._replace(base=held_out_config(family.base, index))
    seed = jnp.asarray(SAMPLED_SEED_END + index, jnp.uint32)
    config = family.default_config()
    if not all(hasattr(config, key) for key in ("_replace", "init_seed", "data_seed")):
        raise TypeError(
            f"family {family.name!r} has no held-out configurations: its dynamic config must be a "
            "NamedTuple with init_seed and data_seed fields (tasks.from_flax families have them)"
        )
    return config._replace(init_seed=seed, data_seed=seed)


def suite_entries(name: str) -> tuple[SuiteEntry, ...]:
    """The declarations of suite ``name``, without building anything."""
    if name not in SUITES:
        raise UnknownNameError(f"unknown suite {name!r}; known suites: {', '.join(suite_names())}")
    return SUITES[name]


def get_suite(name: str, num_tasks: int | None = None) -> list[HeldOutTask]:
    """The held-out tasks of suite ``name``, or its first ``num_tasks`` (loads their datasets
    only, preparing built-ins once)."""
    tasks = []
    for index, entry in enumerate(suite_entries(name)[:num_tasks]):
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
        "permutation; quadratics log-scales, centre and noise. Any family can be wrapped by "
        "tasks.augment.reparameterize(family, level) to train w' = w / s instead, with s "
        "log-uniform in [1e-3, 1e3] per model, tensor or parameter (the function is unchanged)."
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
    heading = "Dynamical systems (meta_train.unrolled_tasks wraps them)"
    lines += ["", heading, "", *_dynamical_listing()]
    return "\n".join(lines)


def _dynamical_listing() -> list[str]:
    system = dynamical.InfluenceBalancing()
    fields = _format_options(dataclasses.asdict(system))
    return [
        f"influence_balancing  {fields}  optimum theta* = {system.optimum():.4f} "
        "(tasks.dynamical.InfluenceBalancing; Tallec & Ollivier 2017)"
    ]


# --- Extension points: a user's own families and suites, reachable from `lopt ... --import`.


class UserModuleError(ImportError):
    """A module named by ``--import`` (``import_tasks``) that cannot be imported."""


def _same_definition(old: Any, new: Any) -> bool:
    """Whether two registrations come from the same source (one module imported twice)."""
    if old == new:
        return True
    where = lambda value: (getattr(value, "__module__", None), getattr(value, "__qualname__", None))
    return where(old) == where(new) and where(new)[1] is not None


def _check_new_name(kind: str, name: Any, registered: dict) -> None:
    if not isinstance(name, str) or not name or any(c.isspace() for c in name):
        raise ValueError(f"a {kind} name must be a non-empty string without spaces, got {name!r}")
    if name in registered:
        raise ValueError(
            f"{kind} {name!r} is already registered; choose another name, or pass replace=True "
            "to register over it"
        )


def register_family(
    name: str,
    build: Callable[..., TaskFamily] | None = None,
    defaults: dict[str, Any] | None = None,
    description: str = "",
    *,
    replace: bool = False,
) -> Any:
    """Register ``build(**options) -> TaskFamily`` as task family ``name``.

    ``get_family(name, **overrides)`` then calls ``build(**{**defaults, **overrides})``; the
    meta-training config (``groups.<group>.family=name``), suites and ``lopt tasks list`` accept
    it. ``build`` takes keyword options (every one without a default must be in ``defaults``) and
    should load its data only when called. Used bare or as a decorator::

        @tasks.register_family("sine", defaults={"hidden": 32})
        def sine(hidden: int, batch_size: int = 32) -> tasks.TaskFamily: ...

    Registering the same function again (its module imported twice) is a no-op; another one under
    a taken name is a ``ValueError`` unless ``replace``. Returns ``build``.
    """
    if build is None:
        return lambda build: register_family(name, build, defaults, description, replace=replace)
    if not callable(build):
        raise TypeError(f"build for task family {name!r} must be callable, got {build!r}")
    defaults = dict(defaults or {})
    if name in FAMILIES and _same_definition(FAMILIES[name].build, build):
        replace = True
    if not replace:
        _check_new_name("task family", name, FAMILIES)
    parameters = inspect.signature(build).parameters
    if not any(p.kind is p.VAR_KEYWORD for p in parameters.values()):
        unknown = sorted(set(defaults) - set(parameters))
        if unknown:
            raise TypeError(
                f"defaults {unknown} of task family {name!r} are not parameters of "
                f"{build.__qualname__}; it takes: {', '.join(parameters)}"
            )
    missing = [
        key
        for key, p in parameters.items()
        if p.default is p.empty
        and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
        and key not in defaults
    ]
    if missing:
        raise TypeError(
            f"task family {name!r}: {build.__qualname__} needs {', '.join(missing)}; give each a "
            "default in the function or in defaults={...}"
        )
    summary = description or (inspect.getdoc(build) or "").split("\n")[0]
    # The function's own defaults too, so `lopt tasks list` shows every option's value.
    defaults = {
        key: p.default
        for key, p in parameters.items()
        if p.default is not p.empty and p.kind is not p.POSITIONAL_ONLY
    } | defaults
    FAMILIES[name] = FamilySpec(build, defaults, summary or f"user family ({build.__module__})")
    return build


def suite_entry(
    family: str,
    *,
    name: str | None = None,
    overrides: dict[str, Any] | None = None,
    num_steps: int = _DEFAULT_STEPS,
    shift: str = "user task",
) -> SuiteEntry:
    """A held-out task of registered ``family`` (its options replaced by ``overrides``) trained
    for ``num_steps``; ``name`` defaults to the family's name. Its seeds are chosen by
    ``get_suite`` (never sampled in meta-training)."""
    return SuiteEntry(name or family, family, dict(overrides or {}), num_steps, shift)


def register_suite(
    name: str, entries: Sequence[SuiteEntry | str], *, replace: bool = False
) -> tuple[SuiteEntry, ...]:
    """Register held-out suite ``name`` for ``lopt evaluate --suite`` and the config's ``eval`` /
    ``comparison`` sections.

    ``entries``: ``suite_entry(...)`` items, or family names (``suite_entry(family)``: default
    options, ``_DEFAULT_STEPS`` steps). Each family must already be registered and each override
    must be one of its options; task names must differ. The same entries registered again are a
    no-op; others under a taken name are a ``ValueError`` unless ``replace``.
    """
    entries = tuple(
        suite_entry(entry) if isinstance(entry, str) else SuiteEntry(*entry) for entry in entries
    )
    if not entries:
        raise ValueError(f"suite {name!r} has no entries")
    if not replace and SUITES.get(name) != entries:
        _check_new_name("suite", name, SUITES)
    names = [entry.name for entry in entries]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(f"suite {name!r} names several tasks {repeated}; give each a name=")
    for entry in entries:
        unknown = sorted(set(entry.overrides) - set(family_options(entry.family)))
        if unknown:
            raise TypeError(
                f"suite {name!r}, task {entry.name!r}: family {entry.family!r} has no option "
                f"{', '.join(unknown)}; its options: {', '.join(family_options(entry.family))}"
            )
        if isinstance(entry.num_steps, bool) or not (
            isinstance(entry.num_steps, int) and entry.num_steps > 0
        ):
            raise ValueError(
                f"suite {name!r}, task {entry.name!r}: num_steps must be a positive int, got "
                f"{entry.num_steps!r}"
            )
    SUITES[name] = entries
    return entries


def held_out_tasks(
    family: str | TaskFamily, num_steps: int, count: int = 1, **overrides: Any
) -> list[HeldOutTask]:
    """``count`` held-out tasks of ``family`` (a registered name, built with ``overrides``, or a
    family) trained for ``num_steps``: its default configuration with seeds that
    ``family.sample`` never draws (``held_out_config``), e.g. for
    ``meta_train.evaluation.evaluate.evaluate(export, tasks.held_out_tasks("sine", 200, 3))``."""
    if isinstance(family, str):
        family = get_family(family, **overrides)
    elif overrides:
        raise TypeError("overrides apply to a family given by name, not to a built family")
    return [
        HeldOutTask(f"{family.name}_heldout{i}", family, held_out_config(family, i), num_steps)
        for i in range(count)
    ]


def _import_path(path: str) -> types.ModuleType:
    path = os.path.abspath(path)
    if not os.path.isfile(path):
        raise UserModuleError(f"--import {path}: no such file")
    # A private module name, so a user's file called e.g. tasks.py cannot shadow this package.
    stem = os.path.splitext(os.path.basename(path))[0]
    name = "lopt_user_" + "".join(c if c.isalnum() else "_" for c in stem)
    loaded = sys.modules.get(name)
    if loaded is not None and getattr(loaded, "__file__", None) == path:
        return loaded
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise UserModuleError(f"--import {path}: not a Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # before running it: dataclasses and pickling look it up
    # Its neighbours importable after everything else, so it can split its code over files.
    if os.path.dirname(path) not in sys.path:
        sys.path.append(os.path.dirname(path))
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


def import_tasks(reference: str) -> types.ModuleType:
    """Import a user's module that registers families and suites (``lopt ... --import``).

    ``reference``: a module name importable from the current directory or ``sys.path``
    (``my_tasks``, ``mypkg.tasks``), or a path to a ``.py`` file. Any failure, including an error
    raised by the module itself, becomes one ``UserModuleError`` naming the module and the cause.
    """
    try:
        if reference.endswith(".py") or os.sep in reference:
            return _import_path(reference)
        # The `lopt` script does not put the current directory on sys.path; `python -m` does.
        if "" not in sys.path and os.getcwd() not in sys.path:
            sys.path.insert(0, os.getcwd())
        return importlib.import_module(reference)
    except UserModuleError:
        raise
    except Exception as error:
        lines = str(error).splitlines()
        detail = f"{type(error).__name__}: {lines[0] if lines else ''}".rstrip(": ")
        hint = "set LOPT_DEBUG=1 for the traceback"
        if isinstance(error, ModuleNotFoundError) and error.name == reference.split(".")[0]:
            hint = "give a module in the current directory or on sys.path, or a path to a .py file"
        raise UserModuleError(f"--import {reference}: {detail} ({hint})") from error
