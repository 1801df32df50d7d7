"""Meta-training configs: load an ``ml_collections`` config file, apply ``--config.key=value``
overrides with type checking, and turn the config into the objects training uses (``validate``
returns ``Settings``), checking every choice before anything is compiled.

This is the part of ``ml_collections.config_flags`` the CLI needs, without absl's global flags: a
config is named (``default``, ``pes``, ... from ``meta_train/configs/``) or given as a path to a
Python file with a ``get_config()`` function. An override's value is parsed with the type of the
value it replaces, so ``--config.estimator.window=ten`` fails naming the key and the type.
"""

from __future__ import annotations

import ast
import importlib.util
import itertools
import json
import math
import os
from collections.abc import Callable, Iterable, Sequence
from typing import Any, NamedTuple, TypeVar

import ml_collections

import lopt
from meta_train import outer, unrolled_tasks, warm_start
from meta_train.es import engine

# The estimators ``estimator.name`` may choose, from their one home (re-exported).
from meta_train.es.estimators import ESTIMATORS as ESTIMATORS
from tasks import augment, registry

CONFIG_DIR = os.path.join(os.path.dirname(__file__), "configs")
# The shipped config whose get_config() declares every key a config may set (the schema), with
# the default run's values; every other config is checked against it.
SCHEMA = "default"

# Keys whose value may change on an existing workdir: they change how long the run goes or how it
# reports, not the trajectory of theta (num_outer_steps only with a constant outer schedule).
# allow_short_horizon only relaxes validation.
RESUMABLE_KEYS = (
    "num_outer_steps",
    "progress",
    "pairs_per_chunk",
    "estimator.allow_short_horizon",
    "comparison.suite",  # the end-of-run comparison only; its default changed from "default"
)
# Dicts whose keys are free (forwarded as keyword arguments), so an override may add a key.
OPEN_DICTS = ("overrides",)


T = TypeVar("T")


class ConfigError(ValueError):
    """A config key or value that cannot be used; the message names the key and what is allowed."""


def config_names() -> list[str]:
    """Names of the configs shipped in ``meta_train/configs/``."""
    return sorted(
        name[:-3]
        for name in os.listdir(CONFIG_DIR)
        if name.endswith(".py") and not name.startswith("_")
    )


def load_config(name_or_path: str) -> ml_collections.ConfigDict:
    """The ``get_config()`` of a shipped config (by name) or of a Python file (by path)."""
    path = name_or_path
    if not os.path.exists(path):
        if name_or_path not in config_names():
            raise ConfigError(
                f"--config {name_or_path!r} is neither a file nor a shipped config; "
                f"shipped: {', '.join(config_names())}"
            )
        path = os.path.join(CONFIG_DIR, f"{name_or_path}.py")
    spec = importlib.util.spec_from_file_location("_lopt_config", path)
    if spec is None or spec.loader is None:
        raise ConfigError(f"--config {path!r} is not a Python file")
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
        config = module.get_config() if hasattr(module, "get_config") else None
    except SyntaxError as error:
        raise ConfigError(
            f"config file {path!r} has a syntax error at line {error.lineno}: {error.msg}"
        ) from None
    except Exception as error:  # the user's code: any error is a bad config file
        raise ConfigError(f"config file {path!r} failed: {type(error).__name__}: {error}") from None
    if not hasattr(module, "get_config"):
        raise ConfigError(f"config file {path!r} defines no get_config() function")
    if not isinstance(config, ml_collections.ConfigDict):
        raise ConfigError(f"get_config() in {path!r} must return an ml_collections.ConfigDict")
    if name_or_path != SCHEMA:
        missing = _missing_keys(config, load_config(SCHEMA))
        if missing:
            raise ConfigError(
                f"get_config() in {path!r} leaves out {', '.join(missing)}; start from "
                f"meta_train.configs.{SCHEMA}.get_config() and change what differs"
            )
    return config


# Groups whose entries are free (task groups, hyperparameters, family options): not compared;
# keys a config may leave out (read with a default).
FREE_GROUPS = ("groups", "hyperparameters", "overrides")
OPTIONAL_KEYS = ("estimator.allow_short_horizon",)


def _missing_keys(config: Any, reference: Any, prefix: str = "") -> list[str]:
    """Dotted keys of ``reference`` that ``config`` lacks (inside ``FREE_GROUPS`` none)."""
    missing = []
    for key in reference:
        dotted = f"{prefix}{key}"
        if key not in config:
            if dotted not in OPTIONAL_KEYS:
                missing.append(dotted)
        elif key not in FREE_GROUPS and isinstance(reference[key], ml_collections.ConfigDict):
            missing += _missing_keys(config[key], reference[key], f"{dotted}.")
    return missing


def _parse_bool(key: str, text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("true", "1", "yes"):
        return True
    if lowered in ("false", "0", "no"):
        return False
    raise ConfigError(f"--config.{key}={text!r}: expected a boolean (true or false)")


def _parse_literal(key: str, text: str) -> Any:
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def parse_value(key: str, text: str, current: Any) -> Any:
    """``text`` parsed as the type of ``current`` (the value it replaces)."""
    if isinstance(current, bool):
        return _parse_bool(key, text)
    if isinstance(current, int):
        try:
            return int(text)
        except ValueError:
            raise ConfigError(f"--config.{key}={text!r}: expected an integer") from None
    if isinstance(current, float):
        try:
            return float(text)
        except ValueError:
            raise ConfigError(f"--config.{key}={text!r}: expected a number") from None
    if isinstance(current, str):
        return text
    if isinstance(current, (tuple, list)):
        value = _parse_literal(key, text)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = (value,)
        if not isinstance(value, (tuple, list)):
            raise ConfigError(f"--config.{key}={text!r}: expected a tuple such as (32, 32)")
        kinds = {type(item) for item in current}
        if kinds and not all(isinstance(item, tuple(kinds | {int})) for item in value):
            names = ", ".join(sorted(kind.__name__ for kind in kinds))
            raise ConfigError(f"--config.{key}={text!r}: expected a tuple of {names}")
        if float in kinds:
            value = [float(item) for item in value]
        return tuple(value)
    return _parse_literal(key, text)


def apply_override(config: ml_collections.ConfigDict, key: str, text: str) -> None:
    """Set the dotted ``key`` of ``config`` from the command-line string ``text``."""
    *parents, leaf = key.split(".")
    node = config
    for depth, part in enumerate(parents):
        if part not in node or not isinstance(node[part], ml_collections.ConfigDict):
            where = ".".join(parents[:depth]) or "the top level"
            groups = [k for k in node if isinstance(node[k], ml_collections.ConfigDict)]
            raise ConfigError(
                f"unknown config key {key!r}: {part!r} is not a group under {where}; "
                f"groups there: {', '.join(groups)}"
            )
        node = node[part]
    if leaf not in node:
        if parents and parents[-1] in OPEN_DICTS:
            node[leaf] = _parse_literal(key, text)
            return
        where = ".".join(parents) or "the top level"
        raise ConfigError(
            f"unknown config key {key!r}; keys under {where}: {', '.join(sorted(node))}"
        )
    current = node[leaf]
    if isinstance(current, ml_collections.ConfigDict):
        raise ConfigError(
            f"config key {key!r} is a group; set one of its keys: {', '.join(sorted(current))}"
        )
    node[leaf] = parse_value(key, text, current)


def split_overrides(argv: Sequence[str]) -> tuple[list[str], list[tuple[str, str]]]:
    """``argv`` without the ``--config.key=value`` items, and those items as ``(key, value)``."""
    rest, overrides = [], []
    items = list(argv)
    while items:
        item = items.pop(0)
        if not item.startswith("--config."):
            rest.append(item)
            continue
        body = item[len("--config.") :]
        if "=" in body:
            key, text = body.split("=", 1)
        elif items:
            key, text = body, items.pop(0)
        else:
            raise ConfigError(f"{item} has no value; write {item}=VALUE")
        overrides.append((key, text))
    return rest, overrides


# Integers reach jax as int32 (step counts, horizons, seeds): larger ones overflow there, after the
# workdir was claimed, so validation refuses them.
INT32_MAX = 2**31 - 1


def _finite(key: str, value: Any) -> None:
    if not math.isfinite(value):
        raise ConfigError(f"config key {key!r} must be a finite number, got {value!r}")
    if isinstance(value, int) and not -INT32_MAX - 1 <= value <= INT32_MAX:
        raise ConfigError(
            f"config key {key!r} is {value}, outside the int32 range lopt computes in "
            f"(at most {INT32_MAX})"
        )


def _at_least(key: str, value: Any, minimum: float) -> None:
    if not value >= minimum:
        raise ConfigError(f"config key {key!r} must be at least {minimum}, got {value!r}")


def _positive(key: str, value: Any) -> None:
    if not value > 0:
        raise ConfigError(f"config key {key!r} must be positive, got {value!r}")


def _finite_numbers(key: str, value: Any) -> None:
    """Every number in ``value`` (nested dicts, tuples) is finite, every integer an int32."""
    if isinstance(value, bool | str) or value is None:
        return
    if isinstance(value, int | float):
        _finite(key, value)
    elif isinstance(value, dict | ml_collections.ConfigDict):
        for name in value:
            _finite_numbers(f"{key}.{name}" if key else name, value[name])
    elif isinstance(value, tuple | list):
        for item in value:
            _finite_numbers(key, item)


Key = str | tuple[str, ...]  # the config key (or keys) whose values an argument is built from


def _keys(key: Key) -> tuple[str, ...]:
    return (key,) if isinstance(key, str) else key


def _refused(keys: Sequence[Key], error: Exception) -> ConfigError:
    """``error`` as the ``ConfigError`` of ``keys`` (each a key or a tuple of keys)."""
    flat = list(dict.fromkeys(name for key in keys for name in _keys(key)))
    quoted = ", ".join(map(repr, flat))
    return ConfigError(f"config key{'s' * (len(flat) > 1)} {quoted}: {error}")


def _build(key: Key, build: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """``build(*args, **kwargs)``, whose arguments are the value of the config ``key``: its
    ``TypeError`` or ``ValueError`` (the object's message says what is allowed) becomes a
    ``ConfigError`` naming ``key``."""
    try:
        return build(*args, **kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as error:
        raise _refused([key], error) from None


def _build_fields(
    build: Callable[..., T], reference: dict[str, Any], fields: dict[str, tuple[Key, Any]]
) -> T:
    """``build(**reference | values)`` for ``fields``, ``{argument: (config key, value)}``, on
    ``reference``, arguments ``build`` accepts. When the object refuses them, the keys named are
    found by building it again with only some arguments taking their values: the key of the first
    value it refuses by itself, else the keys of the smallest sets it refuses together (a rule
    between arguments: ``full_es`` needs ``window == horizon``), else every key."""

    def refuses(names: Iterable[str]) -> Exception | None:
        try:
            build(**reference | {name: fields[name][1] for name in names})
        except (TypeError, ValueError) as error:
            return error
        return None

    try:
        return build(**reference | {name: value for name, (_, value) in fields.items()})
    except (TypeError, ValueError) as error:
        failure = error
    blamed = list(fields)
    for size in range(1, len(fields)):
        refused = [names for names in itertools.combinations(fields, size) if refuses(names)]
        if refused:
            found = set(refused[0] if size == 1 else itertools.chain(*refused))
            blamed = [name for name in fields if name in found]
            failure = refuses(blamed) or failure
            break
    raise _refused([fields[name][0] for name in blamed], failure) from None


# Arguments each value of a config key is first judged on, alone (``_build_fields``): a valid
# engine config, outer settings, meta-loss system and augmentation. gpes is the estimator that
# accepts every resample_every; "reeval" the meta-loss that accepts every train-loss weight.
_ENGINE_REFERENCE = {
    "num_pairs": 1,
    "window": 1,
    "sigma": 1.0,
    "horizon": 1,
    "stagger": False,
    "estimator": "gpes",
}
_SYSTEM_REFERENCE = {"family": None, "meta_loss": "reeval"}
_AUGMENTATION_REFERENCE = {"base": None}
# The keys of the outer section, each the argument of ``outer.OuterSettings`` of its name.
_OUTER_KEYS = (
    "optimizer",
    "learning_rate",
    "clip_norm",
    "schedule",
    "warmup_steps",
    "average_decay",
)


class GroupSettings(NamedTuple):
    """One entry of ``config.groups``, checked: a registered family and its overrides (built, with
    its data, by ``train.build_groups``), its augmentation (an ``augment.ReparameterizedFamily``
    without a base) or ``None``, its engine config and its weight."""

    name: str
    family: str
    overrides: dict[str, Any]
    augmentation: augment.ReparameterizedFamily | None
    engine: engine.EngineConfig
    weight: float


class Settings(NamedTuple):
    """A meta-training config turned into what training uses (``validate``): the learned
    optimizer and its step size (``None`` for a rule that learns its own), the meta-loss system
    without a family (``TaskTrainingSystem``; each group's is this with its family), the groups,
    the outer optimizer's settings and the number of devices (0: all, when ``validate`` was not
    told how many there are)."""

    optimizer: lopt.LearnedOptimizer
    step_size: lopt.StepSize | None
    system: unrolled_tasks.TaskTrainingSystem
    groups: tuple[GroupSettings, ...]
    outer: outer.OuterSettings
    num_devices: int


def validate(
    config: ml_collections.ConfigDict, num_available_devices: int | None = None
) -> Settings:
    """``config`` as ``Settings``; raise ``ConfigError`` naming the key and what is allowed.

    Each rule has one home. The objects the config describes enforce their own: each is built
    from its keys (``_build``, ``_build_fields``), so the key of a value it refuses is known, not
    guessed: the optimizer, the meta-loss system, the outer settings, every group's engine config
    and augmentation; every family, family option and suite is looked up in the task registry (no
    data is loaded, nothing is compiled; ``train.build_groups`` reports a bad override value when
    it loads the family). Checked here is what only the config has: finite numbers, counts, the
    horizon against the window, how the pairs split over the devices.
    """
    import jax

    _finite_numbers("", config)
    for key in ("num_outer_steps", "log_every", "checkpoint_every", "keep_checkpoints"):
        _positive(key, config[key])
    _positive("export_every", config.export_every)
    _positive("eval.every", config.eval.every)
    _positive("comparison.seeds", config.comparison.seeds)
    for lr in config.comparison.adam_learning_rates:
        _positive("comparison.adam_learning_rates", lr)
    for section in ("eval", "comparison"):
        _at_least(f"{section}.num_tasks", config[section].num_tasks, 0)
        _at_least(f"{section}.num_steps", config[section].num_steps, 0)
    _at_least("pairs_per_chunk", config.pairs_per_chunk, -1)  # -1 and 0 are the config's own
    _at_least("num_devices", config.num_devices, 0)
    if num_available_devices is not None and config.num_devices > num_available_devices:
        raise ConfigError(
            f"config key 'num_devices' is {config.num_devices} but only {num_available_devices} "
            "devices exist; use 0 for all of them"
        )
    estimator = config.estimator
    shortest = estimator.min_horizon or estimator.horizon
    if shortest < estimator.window and not estimator.get("allow_short_horizon", False):
        raise ConfigError(
            f"the horizon ({shortest}, 'estimator.min_horizon' or 'estimator.horizon') is shorter "
            f"than 'estimator.window' ({estimator.window}): inner problems would restart inside "
            "every window; raise the horizon, or set --config.estimator.allow_short_horizon=true "
            "if that is meant"
        )
    if not config.groups:
        raise ConfigError("config key 'groups' is empty: meta-train on at least one task family")
    devices = config.num_devices
    if num_available_devices is not None:
        devices = num_devices_to_use(config, num_available_devices)

    optimizer = _optimizer(config)
    step_size = _step_size(config, optimizer)
    system = _build_fields(
        unrolled_tasks.TaskTrainingSystem,
        _SYSTEM_REFERENCE | {"optimizer": optimizer, "step_size": step_size},
        {
            "meta_loss": ("meta_loss", config.meta_loss),
            "meta_loss_scale": ("meta_loss_scale", config.meta_loss_scale),
            "train_loss_weight": ("meta_loss_train_weight", config.meta_loss_train_weight),
        },
    )
    outer_settings = _outer_settings(config)
    platform = jax.default_backend()
    groups = []
    for name, group in config.groups.items():
        engine_config = _build_fields(
            engine.EngineConfig, _ENGINE_REFERENCE, _engine_fields(config, name, platform)
        )
        if devices and group.num_pairs % devices:
            raise ConfigError(
                f"config key 'groups.{name}.num_pairs' ({group.num_pairs}) must be a multiple of "
                f"the number of devices ({devices}) so the pairs split evenly; "
                f"or set --config.num_devices"
            )
        _positive(f"groups.{name}.weight", group.weight)
        _build(f"groups.{name}.family", registry.family_spec, group.family)
        overrides = dict(group.overrides)
        _build(f"groups.{name}.overrides", registry.checked_options, group.family, overrides)
        augmentation = None
        if group.augmentation != "none":
            augmentation = _build_fields(
                augment.ReparameterizedFamily,
                _AUGMENTATION_REFERENCE,
                {
                    "level": (f"groups.{name}.augmentation", group.augmentation),
                    "scale_range": (
                        f"groups.{name}.augmentation_range",
                        tuple(float(s) for s in group.augmentation_range),
                    ),
                },
            )
        groups.append(
            GroupSettings(name, group.family, overrides, augmentation, engine_config, group.weight)
        )
    if config.eval.num_tasks:
        _build("eval.suite", registry.suite_entries, config.eval.suite)
    if config.comparison.num_tasks:
        key = "comparison.suite" if config.comparison.suite else "eval.suite"
        _build(key, registry.suite_entries, comparison_suite(config))
    return Settings(optimizer, step_size, system, tuple(groups), outer_settings, devices)


def _optimizer(config: ml_collections.ConfigDict) -> lopt.LearnedOptimizer:
    """The learned optimizer of the ``optimizer`` section, checked against ``init_from`` when a
    run starts from another theta."""
    _build(
        "optimizer.architecture", lopt.registry.architecture_class, config.optimizer.architecture
    )
    optimizer = _build(
        "optimizer.hyperparameters",
        lopt.get_optimizer,
        config.optimizer.architecture,
        **config.optimizer.hyperparameters,
    )
    if config.init_from:
        _build("init_from", _warm_start_check, config.init_from, optimizer)
    return optimizer


def _step_size(
    config: ml_collections.ConfigDict, optimizer: lopt.LearnedOptimizer
) -> lopt.StepSize | None:
    """The rule's step size from ``optimizer.<field>`` for each field of ``lopt.StepSize`` (a
    refusal names its keys); ``None`` for a rule that learns its own."""
    fields = {
        field: (f"optimizer.{field}", config.optimizer[field]) for field in lopt.StepSize._fields
    }
    _build_fields(lambda **values: lopt.StepSize(**values).check(), {}, fields)
    return unrolled_tasks.step_size_of(optimizer, config.optimizer)


def _warm_start_check(source: str, optimizer: lopt.LearnedOptimizer) -> None:
    """``warm_start`` of a fresh theta, for its refusal (an ``ExportError`` as a ``ValueError``)."""
    import jax

    try:
        warm_start.warm_start(source, optimizer, optimizer.init_meta_params(jax.random.key(0)))
    except lopt.ExportError as error:
        raise ValueError(str(error)) from None


def _engine_fields(
    config: ml_collections.ConfigDict, group: str, platform: str
) -> dict[str, tuple[Key, Any]]:
    """The ``engine.EngineConfig`` arguments of ``group`` with their config keys: the estimator
    section, the group's pairs and ``pairs_per_chunk`` on ``platform``."""
    estimator = config.estimator
    horizon: tuple[Key, Any] = ("estimator.horizon", estimator.horizon)
    if estimator.min_horizon:
        keys = ("estimator.min_horizon", "estimator.horizon")
        horizon = (keys, (estimator.min_horizon, estimator.horizon))
    return {
        "estimator": ("estimator.name", estimator.name),
        "num_pairs": (f"groups.{group}.num_pairs", config.groups[group].num_pairs),
        "window": ("estimator.window", estimator.window),
        "sigma": ("estimator.sigma", estimator.sigma),
        "horizon": horizon,
        "stagger": ("estimator.stagger", estimator.stagger),
        "resample_every": ("estimator.resample_every", estimator.resample_every),
        "shaping": ("estimator.shaping", estimator.shaping),
        "pairs_per_chunk": ("pairs_per_chunk", pairs_per_chunk(config, platform)),
    }


def _checked_outer(**fields: Any) -> outer.OuterSettings:
    """``outer.OuterSettings`` of ``fields``, built once (it checks its values when built)."""
    settings = outer.OuterSettings(**fields)
    settings.build()
    return settings


def _outer_settings(config: ml_collections.ConfigDict) -> outer.OuterSettings:
    """The ``outer.OuterSettings`` of the ``outer`` section."""
    section = config.outer
    # Only the cosine schedule depends on the run length; elsewhere a longer run is a resume.
    num_steps = config.num_outer_steps if section.schedule == "cosine" else 1
    fields = {name: (f"outer.{name}", section[name]) for name in _OUTER_KEYS}
    return _build_fields(
        _checked_outer,
        {},
        fields | {"num_steps": (("num_outer_steps", "outer.schedule"), num_steps)},
    )


def comparison_suite(config: ml_collections.ConfigDict) -> str:
    """The suite of the end-of-run comparison: ``comparison.suite``, or when it is empty (the
    default) ``eval.suite``, so that a run on your own tasks is judged on your own suite."""
    return config.comparison.suite or config.eval.suite


# Above these a run is almost surely a typo (``window=horizon=1e9``): orders of magnitude beyond
# the pretrained optimizer's whole run (its budget: ``lopt.pretrained_info()["budget"]``).
COSTLY_INNER_STEPS = 10**9
COSTLY_BURN_IN_STEPS = 10**6
# The pretrained run's inner steps per second on a 2-core CPU, rounded (its budget as above, its
# wall time in README.md), for the warning's order of magnitude.
PRETRAINED_INNER_STEPS_PER_S = 2e3


def cost_warning(config: ml_collections.ConfigDict) -> str | None:
    """A warning when ``config`` asks for an absurd amount of work, else ``None``: more than
    ``COSTLY_INNER_STEPS`` inner steps in all (outer steps x 2 x pairs x window, summed over the
    groups) or a burn-in of more than ``COSTLY_BURN_IN_STEPS`` sequential inner steps (staggered
    particles start up to a horizon in), which runs before the first outer step, silently."""
    estimator = config.estimator
    per_outer_step = sum(2 * group.num_pairs * estimator.window for group in config.groups.values())
    total = config.num_outer_steps * per_outer_step
    burn_in = estimator.horizon if estimator.stagger else 0
    if total <= COSTLY_INNER_STEPS and burn_in <= COSTLY_BURN_IN_STEPS:
        return None
    return (
        f"warning: this run is {total:.1e} inner training steps ({config.num_outer_steps} outer "
        f"steps x {per_outer_step:.1e}: 2 x pairs x estimator.window {estimator.window}), after "
        f"a burn-in of up to {burn_in:.1e} sequential inner steps per group (estimator.horizon "
        f"{estimator.horizon}, staggered) before the first outer step; at the pretrained run's "
        f"~{PRETRAINED_INNER_STEPS_PER_S:.0e} inner steps per second (2-core CPU) that is "
        f"{_duration(total / PRETRAINED_INNER_STEPS_PER_S)}: check estimator.horizon, "
        "estimator.window and the groups' num_pairs"
    )


def _duration(seconds: float) -> str:
    for unit, size in (("days", 86400), ("hours", 3600), ("minutes", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f} {unit}"
    return f"{seconds:.0f} seconds"


def canonical(config: ml_collections.ConfigDict) -> dict:
    """The config as plain JSON data (tuples become lists), for storing and comparing."""
    return json.loads(config.to_json_best_effort(sort_keys=True))


def num_devices_to_use(config: Any, num_available_devices: int) -> int:
    """``config.num_devices``, or with 0 the most of the available devices that split every
    group's pairs evenly."""
    if config.num_devices:
        return config.num_devices
    pair_counts = [group.num_pairs for group in config.groups.values()]
    return max(
        n
        for n in range(1, num_available_devices + 1)
        if all(count % n == 0 for count in pair_counts)
    )


def pairs_per_chunk(config: Any, platform: str) -> int | None:
    """The engine's ``pairs_per_chunk`` for ``config.pairs_per_chunk`` on ``platform`` (0:
    automatic, -1: all pairs at once)."""
    if config.pairs_per_chunk == -1:
        return None
    if config.pairs_per_chunk == 0:
        return 1 if platform == "cpu" else None
    return config.pairs_per_chunk


def differences(stored: dict, current: dict) -> list[str]:
    """Dotted keys whose values differ between two canonical configs, except the resumable ones
    (``RESUMABLE_KEYS``; ``num_outer_steps`` not when a cosine schedule depends on it) and keys
    ``stored`` lacks that ``current`` holds at their default (``_defaults``): a run stored before
    a key existed ran as its default does, so it still resumes."""
    resumable = set(RESUMABLE_KEYS)
    if current.get("outer", {}).get("schedule") == "cosine":
        resumable.discard("num_outer_steps")
    return _differences(stored, current, _defaults(stored), "", resumable)


def _defaults(stored: dict) -> dict:
    """The schema's canonical config, its rule hyperparameters those of ``stored``'s rule."""
    defaults = canonical(load_config(SCHEMA))
    optimizer = stored.get("optimizer", {})
    try:
        rule = lopt.get_optimizer(optimizer["architecture"], **optimizer["hyperparameters"])
    except (KeyError, TypeError, ValueError):  # not a rule this code builds: no defaults
        defaults["optimizer"]["hyperparameters"] = {}
    else:
        defaults["optimizer"]["hyperparameters"] = json.loads(json.dumps(rule.hyperparameters()))
    return defaults


def _differences(
    stored: dict, current: dict, defaults: Any, prefix: str, resumable: set[str]
) -> list[str]:
    found = []
    for key in sorted(set(stored) | set(current)):
        dotted = f"{prefix}{key}"
        if dotted in resumable:
            continue
        old, new = stored.get(key, "<absent>"), current.get(key, "<absent>")
        default = defaults.get(key, "<absent>") if isinstance(defaults, dict) else "<absent>"
        if isinstance(old, dict) and isinstance(new, dict):
            found += _differences(old, new, default, f"{dotted}.", resumable)
        elif key not in stored and new == default:
            continue
        elif old != new:
            found.append(f"{dotted}: {old!r} -> {new!r}")
    return found
