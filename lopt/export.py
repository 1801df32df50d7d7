"""Learned optimizers as optax transforms, and their saved form.

An export is a directory::

    <path>/optimizer.json   format name and version, lopt version, architecture, hyperparameters,
                            the step size (rules with the learning rate outside them), a SHA-256
                            of theta, free-form metadata, and the export's fingerprint
    <path>/theta/           theta, written by orbax-checkpoint

Format 1 (``normalized-v1``, ``normalized-v2``) kept a rule's step size among its hyperparameters
and named the fields that only seed theta's learning rate ``learning_rate`` /
``base_learning_rate``; ``load`` reads it into the same optimizer (``upgrade_v1``).

The fingerprint (``fingerprint_sha256``) is a SHA-256 over everything that decides the updates:
the architecture, the hyperparameters, the step size, the metadata's ``num_steps`` and theta's
SHA-256. ``load``
refuses an export whose description no longer matches it (a hand edit of the learning rate, a
flipped bit in ``rms_decay``). Exports written before fingerprints load with the theta checksum
alone; ``lopt.pretrained`` requires the fingerprint.

``save`` writes the whole directory aside and renames it into place, so a reader never sees a
half-written export where a good one stood. Replacing one takes two renames (the old export aside,
the new one into place); a process killed between them leaves ``.<name>.old-<tag>`` and the
complete ``.<name>.tmp-<tag>`` beside ``<path>``, which ``load`` and the next ``save`` roll forward
(``recover``).
The metadata key ``"num_steps"`` (the meta-training horizon) is what ``load`` uses for the time
features when it is not given ``num_steps``.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import importlib.metadata
import json
import os
import shutil
import uuid
import warnings
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from lopt import registry
from lopt.base import LearnedOptimizer, LearnedRule, MetaParams
from lopt.step_size import StepSize, with_step_size

FORMAT_NAME = "lopt-optimizer"
FORMAT_VERSION = 2
STEP_SIZE_KEY = "step_size"
# Format 1's names of the fields that only seed theta's learning rate.
V1_RENAMED = {
    "learning_rate": "initial_learning_rate",
    "base_learning_rate": "initial_learning_rate",
}
CONFIG_FILE = "optimizer.json"
THETA_DIR = "theta"
FINGERPRINT_KEY = "fingerprint_sha256"


class ExportError(Exception):
    """A problem with an exported optimizer directory; the message names the path."""


class NotAnExportError(ExportError, FileNotFoundError):
    """The path does not exist or holds no exported optimizer."""


class CorruptExportError(ExportError, ValueError):
    """The export is truncated, corrupt or inconsistent."""


class NewerFormatError(ExportError, ValueError):
    """The export was written by a newer lopt in a format this one cannot read."""


class UnknownArchitectureError(ExportError, registry.UnknownArchitectureError):
    """The export names an architecture this installation does not know."""


def package_version() -> str:
    try:
        return importlib.metadata.version("lopt")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


@jax.tree_util.register_static
@dataclasses.dataclass(frozen=True)
class ParamsSignature:
    """The leaf shapes (in tree order) of the params a state was initialised for: static pytree
    data (no leaves), so it costs nothing, passes through ``jit`` and is checked at trace time.
    Only shapes: wrappers such as flax's ``nnx.Param`` change the tree between ``init`` and
    ``update`` but not the leaves."""

    shapes: tuple[tuple[int, ...], ...]

    @classmethod
    def of(cls, params: Any) -> ParamsSignature:
        return cls(tuple(tuple(np.shape(leaf)) for leaf in jax.tree.leaves(params)))


class TransformState(NamedTuple):
    """``to_optax``'s state: the learned optimizer's ``inner`` state, and the ``signature`` of the
    params ``init`` was given; ``update`` refuses params of other shapes (even of the same total
    size, which the flat state alone would accept)."""

    inner: Any
    signature: ParamsSignature


def _check_signature(params: Any, expected: ParamsSignature) -> None:
    got = ParamsSignature.of(params)
    if got != expected:
        raise ValueError(
            f"update got params with leaf shapes {got.shapes}, but the state was initialised "
            f"for {expected.shapes}: call init with the params you train"
        )


def _with_params_check(
    init_inner: Callable[[Any], Any], apply: Callable[[Any, Any, Any, Any], tuple[Any, Any]]
) -> optax.GradientTransformationExtraArgs:
    """An optax transform around a learned optimizer's state that refuses a missing ``params``
    or params of other shapes than ``init`` saw; ``apply(inner, updates, params, value)``."""

    def init_fn(params: Any) -> TransformState:
        return TransformState(init_inner(params), ParamsSignature.of(params))

    def update_fn(
        updates: Any, state: Any, params: Any = None, *, value: Any = None, **extra_args: Any
    ) -> tuple[Any, Any]:
        del extra_args
        if params is None:
            raise ValueError(
                "learned optimizers need the params: call update(grads, state, params)"
            )
        _check_signature(params, state.signature)
        updates, inner = apply(state.inner, updates, params, value)
        return updates, TransformState(inner, state.signature)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def _past_horizon_warning(message: str) -> Callable[[jax.Array], None]:
    """``check(past)``, traceable (eager, jit, vmap): warns ``message`` the first time ``past``
    holds, once per ``check``."""
    warned = []

    def warn_once(past: Any) -> None:
        # ``past`` is checked here too: under a vmap with a batched step, lax.cond runs both
        # branches and the callback fires whether or not any step is past the horizon.
        if np.any(past) and not warned:
            warned.append(True)
            warnings.warn(message, stacklevel=1)

    def check(past: jax.Array) -> None:
        jax.lax.cond(past, lambda: jax.debug.callback(warn_once, past), lambda: None)

    return check


def _warn_past_schedule(schedule: optax.Schedule, num_steps: int) -> optax.Schedule:
    """``schedule``, warning once when called for a step at or past ``num_steps``, where a
    cosine schedule's learning rate is 0 and the optimizer stops moving the params."""
    check_past = _past_horizon_warning(
        f"the learning rate is 0 from step {num_steps} on: the optimizer was built for "
        f"num_steps={num_steps} and its cosine schedule ends there, so it no longer moves the "
        "params; rebuild it with the run's length (lopt.pretrained(num_steps=...) or "
        "lopt.load(path, num_steps=...))"
    )

    def warned_schedule(count: jax.Array) -> jax.Array:
        check_past(jnp.asarray(count) >= num_steps)
        return schedule(count)

    return warned_schedule


def to_optax(
    optimizer: LearnedOptimizer,
    theta: MetaParams,
    num_steps: int | jax.Array | None,
    step_size: StepSize | None = None,
) -> optax.GradientTransformationExtraArgs:
    """An optax transform that applies ``optimizer`` with meta-parameters ``theta``.

    ``update(grads, state, params, value=loss)`` follows optax's ``GradientTransformationExtraArgs``
    convention; ``params`` is required, ``value`` only for optimizers built with ``use_loss``.
    ``num_steps`` is the training horizon that time features (or the ``cosine`` schedule) are
    relative to (ignored, and may be ``None``, when nothing depends on it).

    A rule with the learning rate outside it (``LearnedRule``, architecture ``normalized``) needs
    ``step_size``: ``with_step_size(scale_by_rule(theta, optimizer), step_size, num_steps)``.
    Other optimizers learn their own step size and take none.

    Non-finite gradients: the per-parameter networks (``mlp``, ``lstm``) normalise their features
    per tensor, so a NaN or inf in one gradient entry makes the update of its whole tensor NaN
    and leaves that tensor's moments NaN for every later step (other tensors are unaffected);
    ``optax.adam``, and lopt's ``adam`` and ``sgdm``, confine it to the entry. Wrap the transform
    in ``optax.apply_if_finite`` to skip such steps and keep the state clean.
    """
    name = type(optimizer).__name__
    if isinstance(optimizer, LearnedRule):
        if step_size is None:
            raise ValueError(
                f"{name} is a direction with the learning rate outside it and needs "
                "step_size=lopt.StepSize(learning_rate, schedule, warmup_fraction, weight_decay)"
            )
        step_size.check_horizon(num_steps)  # here, not at init: lopt.load(path) refuses
        if step_size.needs_horizon and isinstance(num_steps, int):
            step_size = step_size._replace(
                learning_rate=_warn_past_schedule(step_size.learning_rates(num_steps), num_steps)
            )
        return with_step_size(scale_by_rule(theta, optimizer), step_size, num_steps)
    if step_size is not None:
        raise ValueError(
            f"{name} learns its own step size, so it takes no step_size; only rules with the "
            "learning rate outside them (lopt.base.LearnedRule, architecture 'normalized') do"
        )
    if num_steps is None:
        if optimizer.uses_horizon:
            raise ValueError(
                f"{name} has time features and needs num_steps, the number of steps the "
                "optimizer will train for"
            )
        num_steps = 1
    theta = jax.tree.map(jnp.asarray, theta)
    check_past = _past_horizon_warning(
        f"{name} has run past num_steps={num_steps}, the horizon its time features are relative "
        "to; rebuild it with the run's length (lopt.load(path, num_steps=...))"
    )

    def warn_past_horizon(inner: Any) -> None:
        step, horizon = getattr(inner, "step", None), getattr(inner, "num_steps", None)
        if step is not None and horizon is not None:
            check_past(step > horizon)

    def apply(inner: Any, updates: Any, params: Any, value: Any) -> tuple[Any, Any]:
        updates, inner = optimizer.update(theta, inner, updates, params, value)
        if optimizer.uses_horizon:
            warn_past_horizon(inner)
        return updates, inner

    return _with_params_check(lambda params: optimizer.init(theta, params, num_steps), apply)


def scale_by_rule(
    theta: MetaParams, optimizer: LearnedRule
) -> optax.GradientTransformationExtraArgs:
    """The rule alone, in optax's ``scale_by_*`` convention: its updates are the direction with
    the gradient's sign (unit RMS per tensor for ``normalized``), so a descent step needs a
    learning rate after it (``with_step_size``, or ``optax.scale_by_learning_rate``)."""
    if not isinstance(optimizer, LearnedRule):
        raise ValueError(
            f"architecture {optimizer.architecture!r} folds its step size into its update, so it "
            "has no direction-only form; use to_optax (or lopt.load) for its full update"
        )
    theta = jax.tree.map(jnp.asarray, theta)
    return _with_params_check(
        lambda params: optimizer.init(theta, params),
        lambda inner, updates, params, value: optimizer.update(
            theta, inner, updates, params, value
        ),
    )


def _theta_digest(theta: MetaParams) -> str:
    digest = hashlib.sha256()
    for path, leaf in jax.tree_util.tree_flatten_with_path(theta)[0]:
        array = np.asarray(leaf)
        digest.update(f"{jax.tree_util.keystr(path)}:{array.dtype}:{array.shape};".encode())
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def fingerprint(config: dict) -> str:
    """SHA-256 of what an export's updates depend on, from its parsed ``optimizer.json``:
    architecture, hyperparameters, the step size (when it has one),
    ``metadata["num_steps"]`` (the horizon ``load`` defaults to) and theta's SHA-256, as
    canonical JSON (sorted keys, no spaces)."""
    covered = {
        "architecture": config["architecture"],
        "hyperparameters": config["hyperparameters"],
        "num_steps": (config.get("metadata") or {}).get("num_steps"),
        "theta_sha256": config["theta_sha256"],
    }
    if STEP_SIZE_KEY in config:
        covered[STEP_SIZE_KEY] = config[STEP_SIZE_KEY]
    text = json.dumps(covered, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic | np.ndarray | jax.Array):
        return np.asarray(value).tolist()
    if isinstance(value, tuple | set | frozenset):
        return list(value)
    raise TypeError(f"metadata value {value!r} of type {type(value).__name__} is not JSON data")


def _check_theta(optimizer: LearnedOptimizer, theta: MetaParams) -> None:
    expected = jax.eval_shape(optimizer.init_meta_params, jax.random.key(0))
    got = jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), jnp.result_type(x)), theta)
    if jax.tree.structure(expected) != jax.tree.structure(got) or any(
        (e.shape, e.dtype) != (g.shape, g.dtype)
        for e, g in zip(jax.tree.leaves(expected), jax.tree.leaves(got), strict=True)
    ):
        raise ValueError(f"theta does not match {optimizer!r}: expected {expected}, got {got}")


def _checkpointer():
    import orbax.checkpoint as ocp  # lazy: orbax is slow to import and only needed here

    # An export is written by one process, also in a multi-process run: by default orbax would
    # wait at barriers for every process to save too.
    this_process = jax.process_index()
    options = ocp.options.MultiprocessingOptions(
        primary_host=this_process, active_processes={this_process}
    )
    return ocp.StandardCheckpointer(multiprocessing_options=options)


def save(
    path: str | os.PathLike,
    optimizer: LearnedOptimizer,
    theta: MetaParams,
    metadata: dict | None = None,
    step_size: StepSize | None = None,
) -> None:
    """Write ``optimizer``, ``theta``, its ``step_size`` (a ``LearnedRule``'s default learning
    rate, schedule and weight decay, which ``load`` applies) and JSON ``metadata`` as an export
    directory at ``path``, replacing an earlier export there atomically (write aside, then
    rename)."""
    path = os.path.abspath(os.fspath(path))
    _check_theta(optimizer, theta)
    if step_size is not None and not isinstance(optimizer, LearnedRule):
        raise ValueError(
            f"{type(optimizer).__name__} learns its own step size: save it without step_size"
        )
    # Host numpy arrays: orbax refuses to save process-local jax.Arrays in a multi-process run.
    theta = jax.tree.map(lambda x: np.asarray(x, jnp.result_type(x)), theta)
    config = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "lopt_version": package_version(),
        "created": datetime.datetime.now(datetime.UTC).isoformat(),
        "architecture": optimizer.architecture,
        "hyperparameters": optimizer.hyperparameters(),
        **({STEP_SIZE_KEY: step_size.check().to_json()} if step_size is not None else {}),
        "theta_sha256": _theta_digest(theta),
        "metadata": dict(metadata or {}),
    }
    try:
        text = json.dumps(config, indent=2, default=_json_default)
    except (TypeError, ValueError) as error:
        raise ValueError(f"cannot save to {path}: metadata must be JSON data ({error})") from error
    # Fingerprint the description as ``load`` will parse it (tuples as lists, numpy as floats).
    config[FINGERPRINT_KEY] = fingerprint(json.loads(text))
    text = json.dumps(config, indent=2, default=_json_default)
    recover(path)
    if os.path.exists(path) and not is_replaceable(path):
        raise FileExistsError(
            f"refusing to replace {path}: it exists and is not an exported optimizer; "
            "choose another path or remove it"
        )
    parent = os.path.dirname(path)
    os.makedirs(parent, exist_ok=True)
    tag = uuid.uuid4().hex[:12]
    staging = os.path.join(parent, f".{os.path.basename(path)}.tmp-{tag}")
    try:
        os.makedirs(staging)
        checkpointer = _checkpointer()
        checkpointer.save(os.path.join(staging, THETA_DIR), theta)
        checkpointer.wait_until_finished()
        checkpointer.close()
        with open(os.path.join(staging, CONFIG_FILE), "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        _swap_into_place(staging, path, tag)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def is_replaceable(path: str | os.PathLike) -> bool:
    """Whether ``save`` may replace ``path``: an empty folder or an export (has its description)."""
    if os.path.isdir(path):
        return not os.listdir(path) or os.path.isfile(os.path.join(path, CONFIG_FILE))
    return False


def _aside(path: str, kind: str, tag: str) -> str:
    """The hidden sibling of ``path`` that ``save`` stages in (``tmp``) or moves it to (``old``)."""
    return os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.{kind}-{tag}")


def _swap_into_place(staging: str, path: str, tag: str) -> None:
    """Rename ``staging`` to ``path``; an existing ``path`` is moved aside first, removed after."""
    if not os.path.exists(path):
        os.rename(staging, path)
        return
    old = _aside(path, "old", tag)
    os.rename(path, old)
    try:
        os.rename(staging, path)
    except BaseException:
        os.rename(old, path)
        raise
    shutil.rmtree(old, ignore_errors=True)


def recover(path: str | os.PathLike) -> bool:
    """Finish a ``save`` killed between its two renames; return whether it did.

    When ``path`` is missing and an ``.old-<tag>`` sibling exists, the ``.tmp-<tag>`` staging
    folder of the same save is complete (its description is written last), so it is renamed into
    place and the old export removed; without it, the old export is renamed back.
    """
    path = os.path.abspath(os.fspath(path))
    parent, prefix = os.path.dirname(path), f".{os.path.basename(path)}.old-"
    if os.path.exists(path) or not os.path.isdir(parent):
        return False
    tags = [name[len(prefix) :] for name in os.listdir(parent) if name.startswith(prefix)]
    for tag in tags:
        old, staging = _aside(path, "old", tag), _aside(path, "tmp", tag)
        if os.path.isfile(os.path.join(staging, CONFIG_FILE)):
            os.rename(staging, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(old, path)
        return True
    return False


def _shown(path: str) -> str:
    """``path`` as a user would type it: relative when it is under the working directory."""
    relative = os.path.relpath(path)
    return path if relative.startswith(os.pardir) else relative


def _read_config(path: str, require_fingerprint: bool = False) -> dict:
    if not os.path.exists(path):
        raise NotAnExportError(f"no exported optimizer at {path}: the path does not exist")
    if not os.path.isdir(path):
        raise NotAnExportError(f"{path} is a file, not an exported optimizer (a directory)")
    config_path = os.path.join(path, CONFIG_FILE)
    if not os.path.isfile(config_path):
        inside = os.path.join(path, "export")  # what `lopt meta-train` writes in its workdir
        if os.path.isfile(os.path.join(inside, CONFIG_FILE)):
            raise NotAnExportError(
                f"{path} is not an exported optimizer but holds one: did you mean {_shown(inside)}?"
            )
        raise NotAnExportError(
            f"{path} is not an exported optimizer: it has no {CONFIG_FILE} (write one with "
            "lopt.save)"
        )
    try:
        with open(config_path, encoding="utf-8") as f:
            config = json.load(f)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CorruptExportError(f"{config_path} is corrupt or truncated: {error}") from error
    if not isinstance(config, dict) or config.get("format") != FORMAT_NAME:
        raise NotAnExportError(f"{config_path} is not a lopt optimizer description")
    version = config.get("format_version")
    if type(version) is not int or version < 1:
        raise CorruptExportError(
            f"{config_path} has no valid format_version (got {version!r}; versions start at 1)"
        )
    if version > FORMAT_VERSION:
        raise NewerFormatError(
            f"{path} has format version {version}, written by lopt "
            f"{config.get('lopt_version', '?')}; this lopt ({package_version()}) reads format "
            f"versions up to {FORMAT_VERSION}: upgrade lopt to load it"
        )
    missing = {"architecture", "hyperparameters", "theta_sha256"} - set(config)
    if missing:
        raise CorruptExportError(f"{config_path} lacks {sorted(missing)}")
    recorded = config.get(FINGERPRINT_KEY)
    if recorded is None and require_fingerprint:
        raise CorruptExportError(
            f"{config_path} has no {FINGERPRINT_KEY}: re-export it with lopt.save, or reinstall "
            "lopt if it shipped with it"
        )
    if recorded is not None and recorded != fingerprint(config):
        raise CorruptExportError(
            f"{config_path} was changed after lopt.save wrote it (its architecture, "
            f"hyperparameters, num_steps or theta checksum no longer match {FINGERPRINT_KEY}): "
            "re-export it with lopt.save, or reinstall lopt if it shipped with it"
        )
    return config


def _restore_theta(path: str, optimizer: LearnedOptimizer, expected_digest: str) -> MetaParams:
    theta_path = os.path.join(path, THETA_DIR)
    if not os.path.isdir(theta_path):
        raise CorruptExportError(f"{path} is incomplete: {THETA_DIR}/ is missing")
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    abstract = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device),
        jax.eval_shape(optimizer.init_meta_params, jax.random.key(0)),
    )
    try:
        checkpointer = _checkpointer()
        theta = checkpointer.restore(theta_path, abstract)
        checkpointer.close()
    except Exception as error:
        # Only the first line: tensorstore's messages run to dozens of lines of spec dumps.
        lines = str(error).strip().splitlines() or [""]
        raise CorruptExportError(
            f"cannot read theta from {theta_path} (corrupt, truncated, or saved for other "
            f"hyperparameters): {type(error).__name__}: {lines[0][:300]}"
        ) from error
    if _theta_digest(theta) != expected_digest:
        raise CorruptExportError(
            f"theta in {theta_path} does not match the checksum in {CONFIG_FILE}: corrupt export"
        )
    return theta


def upgrade_v1(
    architecture: str, hyperparameters: dict[str, Any]
) -> tuple[dict[str, Any], StepSize | None]:
    """``(hyperparameters, step_size)`` in the current form from format 1's hyperparameters
    (also what configs recorded before the step size had its own keys, e.g. a shipped version's
    ``training.json``): a rule's step size comes out of them (fields it lacks at ``StepSize``'s
    defaults, which were the rule's), and ``V1_RENAMED`` fields get their new names."""
    hyperparameters = dict(hyperparameters)
    if issubclass(registry.architecture_class(architecture), LearnedRule):
        fields = {k: hyperparameters.pop(k) for k in StepSize._fields if k in hyperparameters}
        return hyperparameters, StepSize(**fields)
    return {V1_RENAMED.get(k, k): v for k, v in hyperparameters.items()}, None


class _Loaded(NamedTuple):
    """An export as ``_load`` reads it."""

    optimizer: LearnedOptimizer
    theta: MetaParams
    metadata: dict
    step_size: StepSize | None


def _describe(
    path: str, require_fingerprint: bool = False
) -> tuple[LearnedOptimizer, StepSize | None, dict]:
    """``(optimizer, step_size, description)`` of the export at ``path`` (absolute), theta not
    read."""
    recover(path)
    config = _read_config(path, require_fingerprint)
    architecture = config["architecture"]
    try:
        cls = registry.architecture_class(architecture)
    except registry.UnknownArchitectureError as error:
        raise UnknownArchitectureError(f"{path}: {error}") from error
    try:
        if config["format_version"] >= 2:
            hyperparameters = config["hyperparameters"]
            step_size = config.get(STEP_SIZE_KEY)
            step_size = None if step_size is None else StepSize(**step_size)
        else:
            hyperparameters, step_size = upgrade_v1(architecture, config["hyperparameters"])
        optimizer = cls(**hyperparameters)
        if step_size is not None:
            step_size.check()
    except (TypeError, ValueError) as error:
        raise CorruptExportError(
            f"{path}: invalid hyperparameters for architecture {architecture!r}: {error}"
        ) from error
    return optimizer, step_size, config


def _load(path: str | os.PathLike, require_fingerprint: bool = False) -> _Loaded:
    path = os.path.abspath(os.fspath(path))
    optimizer, step_size, config = _describe(path, require_fingerprint)
    theta = _restore_theta(path, optimizer, config["theta_sha256"])
    return _Loaded(optimizer, theta, config.get("metadata", {}), step_size)


def load_optimizer(
    path: str | os.PathLike, *, require_fingerprint: bool = False
) -> tuple[LearnedOptimizer, MetaParams, dict]:
    """``(optimizer, theta, metadata)`` from an export directory written by ``save``, checked
    against its fingerprint (required with ``require_fingerprint``) and theta's checksum."""
    return _load(path, require_fingerprint)[:3]


def load_step_size(path: str | os.PathLike) -> StepSize | None:
    """The step size an export was saved with (``None``: the rule learns its own, or none was
    saved)."""
    return _describe(os.path.abspath(os.fspath(path)))[1]


def add_fingerprint(path: str | os.PathLike) -> str:
    """Give an export written before fingerprints its ``fingerprint_sha256``, once its theta has
    verified against the recorded checksum; ``optimizer.json`` is replaced atomically and nothing
    else in it changes. Returns the fingerprint."""
    path = os.path.abspath(os.fspath(path))
    load_optimizer(path)  # refuses a corrupt theta (or a fingerprint that no longer matches)
    config_path = os.path.join(path, CONFIG_FILE)
    with open(config_path, encoding="utf-8") as f:
        config = json.load(f)
    config[FINGERPRINT_KEY] = fingerprint(config)
    staging = f"{config_path}.tmp-{uuid.uuid4().hex[:12]}"
    with open(staging, "w", encoding="utf-8") as f:
        f.write(json.dumps(config, indent=2))
        f.flush()
        os.fsync(f.fileno())
    os.replace(staging, config_path)
    return config[FINGERPRINT_KEY]


def load(
    path: str | os.PathLike,
    num_steps: int | None = None,
    learning_rate: float | optax.Schedule | StepSize | None = None,
    *,
    require_fingerprint: bool = False,
) -> optax.GradientTransformationExtraArgs:
    """The optax transform of an export, ready to train with (its updates are added to params).

    A rule with the learning rate outside it (architecture ``normalized``) loads as
    ``to_optax(rule, theta, num_steps, step_size)`` with the step size it was saved with:
    ``learning_rate`` replaces its peak (a float), its whole schedule (an optax schedule, used as
    it is) or the whole step size (a ``StepSize``). The ``cosine`` schedule needs ``num_steps``,
    the length of the run, reaches a learning rate of 0 there, and warns once (eager or under jit)
    when run past it: the optimizer then no longer moves the params, as in the meta-training it
    was learned in.
    Other architectures fold their learning rate into the network and take no ``learning_rate``;
    ``num_steps`` (the horizon of their time features) defaults to the meta-training horizon.
    ``require_fingerprint`` refuses an export without a fingerprint (one written before them).
    """
    optimizer, theta, metadata, step_size = _load(path, require_fingerprint)
    if isinstance(optimizer, LearnedRule):
        if isinstance(learning_rate, StepSize):
            step_size = learning_rate.check()
        elif learning_rate is not None:
            step_size = (step_size or StepSize())._replace(learning_rate=learning_rate).check()
        elif step_size is None:
            raise ValueError(
                f"{os.fspath(path)} was saved without a step size: pass "
                "lopt.load(path, num_steps, learning_rate=...)"
            )
        return to_optax(optimizer, theta, num_steps, step_size)
    if learning_rate is not None:
        raise ValueError(
            f"{os.fspath(path)}: architecture {optimizer.architecture!r} learns its own step size, "
            "so it takes no learning_rate; only rules with the learning rate outside them "
            "(architecture 'normalized') do"
        )
    if num_steps is None:
        num_steps = metadata.get("num_steps")
        if num_steps is None and optimizer.uses_horizon:
            raise ValueError(
                f"{os.fspath(path)}: this optimizer's time features need the training horizon and "
                "the export's metadata has no 'num_steps': pass lopt.load(path, num_steps=...)"
            )
    return to_optax(optimizer, theta, num_steps)


def load_rule(path: str | os.PathLike) -> optax.GradientTransformationExtraArgs:
    """The direction-only transform of an export (``scale_by_rule``); compose it as
    ``lopt.with_step_size(load_rule(path), step_size, num_steps)``."""
    optimizer, theta, _ = load_optimizer(path)
    try:
        return scale_by_rule(theta, optimizer)
    except ValueError as error:
        raise ValueError(f"{os.fspath(path)}: {error}") from None
