"""The particle engine: staggered antithetic inner problems, stepped a window at a time.

``N`` antithetic pairs of particles run an ``UnrolledSystem``. A pair owns (leading axis ``N``):
the twins' states (a second axis of 2: ``theta + eps`` then ``theta - eps``), its dynamic config,
its step counter and horizon, its noise (``estimators.Noise``) and its rng. The twins share the
config, the init key and every minibatch key, so their loss difference measures theta alone.

``window_step`` runs ``K`` inner steps of every pair in one ``lax.scan`` (``vmap`` over pairs and
twins) and returns the estimate. A particle whose counter reaches its horizon, or whose twin loss
is not finite, is reset at the end of that same scan iteration (new config, new horizon, new
state, new noise) with selects, no Python branching. So every loss belongs to exactly one inner
problem and is weighted by that problem's ``xi``; no loss is ever computed at a reset, and
non-finite losses are masked out, counted, and never reach the estimate.

Every random draw of a pair comes from the key stored in that pair, so results do not depend on
how the pairs are split across devices. theta is flattened with ``ravel_pytree``: noise is stored
flat, ``[N, P]``.

Systems must be pytrees (e.g. ``flax.struct.PyTreeNode``; data as array leaves, the rest static)
or hashable objects, because the engine's functions pass them through ``jax.jit``.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.flatten_util import ravel_pytree

from meta_train.es import estimators
from meta_train.es.estimators import ESTIMATORS, Estimate, Noise, WindowOutputs
from meta_train.es.system import UnrolledSystem

__all__ = [
    "ESTIMATORS",
    "EngineConfig",
    "Estimate",
    "Particles",
    "init_particles",
    "particles_shape",
    "sample_horizon",
    "unroll_window",
    "window_step",
]


@dataclasses.dataclass(frozen=True)
class EngineConfig:
    """How the particles run and which estimator turns their losses into a gradient.

    ``num_pairs``: N antithetic pairs (2N particles). ``window``: K inner steps per outer step.
    ``sigma``: perturbation scale, ``eps ~ N(0, sigma^2 I)``. ``horizon``: inner steps per problem,
    a fixed T or ``(T_min, T_max)`` sampled log-uniformly per problem. ``stagger``: start each pair
    at a uniform random step of its first problem (really advanced there), else all at step 0.
    ``estimator``: one of ``ESTIMATORS``. ``resample_every``: M for ``gpes``. ``shaping``: one of
    ``estimators.SHAPINGS``, how each pair's loss difference weighs (``estimators`` docstring).
    ``pairs_per_chunk``: how many pairs are vectorised together; the chunks run one after another
    (``lax.map``). ``None`` vectorises all pairs at once (what an accelerator wants); on a CPU small
    chunks keep a pair's working set in cache and run faster (the ratio:
    ``benchmarks/results/meta_train_throughput.json``). With 1, a pair that is not due a reset skips
    building a fresh problem (a real branch, not a select). Results do not depend on it.
    """

    num_pairs: int
    window: int
    sigma: float
    horizon: int | tuple[int, int]
    stagger: bool = True
    estimator: str = "es_single"
    resample_every: int = 1
    pairs_per_chunk: int | None = None
    shaping: str = "none"

    def __post_init__(self):
        if isinstance(self.horizon, list | tuple):
            object.__setattr__(self, "horizon", tuple(self.horizon))
        _check_int("num_pairs", self.num_pairs)
        _check_int("window", self.window)
        _check_int("resample_every", self.resample_every)
        if self.pairs_per_chunk is not None:
            _check_int("pairs_per_chunk", self.pairs_per_chunk)
        if not self.sigma > 0:
            raise ValueError(f"sigma must be > 0, got {self.sigma}")
        if isinstance(self.horizon, tuple):
            if len(self.horizon) != 2:
                raise ValueError(f"horizon must be an int or (T_min, T_max), got {self.horizon}")
            _check_int("horizon[0] (T_min)", self.horizon[0])
            _check_int("horizon[1] (T_max)", self.horizon[1])
            if self.horizon[0] > self.horizon[1]:
                raise ValueError(f"horizon (T_min, T_max) needs T_min <= T_max, got {self.horizon}")
        else:
            _check_int("horizon", self.horizon)
        if self.estimator not in ESTIMATORS:
            raise ValueError(f"unknown estimator {self.estimator!r}; choose one of {ESTIMATORS}")
        if self.estimator == "full_es" and (self.horizon != self.window or self.stagger):
            raise ValueError(
                "full_es is one estimate per whole inner problem: it needs a fixed horizon equal "
                f"to the window and stagger=False (got horizon={self.horizon}, "
                f"window={self.window}, stagger={self.stagger}); set window=horizon, stagger=False"
            )
        if self.shaping not in estimators.SHAPINGS:
            raise ValueError(
                f"unknown shaping {self.shaping!r}; choose one of {estimators.SHAPINGS}"
            )
        if self.shaping != "none" and not estimators.uses_noise(self.estimator):
            raise ValueError(
                f"shaping={self.shaping!r} weighs loss differences of perturbed twins; "
                f"{self.estimator!r} has none: use an ES estimator or shaping='none'"
            )
        if self.resample_every != 1 and self.estimator != "gpes":
            raise ValueError(
                f"resample_every={self.resample_every} only applies to estimator='gpes' "
                f"(got {self.estimator!r}); leave it at 1 or use gpes"
            )


def _check_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


class Particles(NamedTuple):
    """All pairs' inner problems; every leaf has leading axis ``N``.

    ``state``: system state, leaves ``[N, 2, ...]`` (twin axis: ``+eps``, ``-eps``); ``config``:
    dynamic config ``[N, ...]``; ``step``: ``[N]`` int32 steps done in the current problem;
    ``horizon``: ``[N]`` int32; ``noise``: ``estimators.Noise`` with ``[N, P]`` arrays; ``key``:
    ``[N, ...]`` uint32 raw key data (``jax.random.key_data``) so checkpoints hold plain arrays.
    """

    state: Any
    config: Any
    step: jax.Array
    horizon: jax.Array
    noise: Noise
    key: jax.Array


class _Problem(NamedTuple):
    state: Any
    config: Any
    horizon: jax.Array
    eps: jax.Array


class _Sums(NamedTuple):
    weighted: jax.Array
    count: jax.Array
    loss_sum: jax.Array
    diff_sum: jax.Array
    nonfinite: jax.Array
    resets: jax.Array


def sample_horizon(key: jax.Array, horizon: int | tuple[int, int]) -> jax.Array:
    """A ``[]`` int32 horizon: ``horizon`` itself, or log-uniform over ``[T_min, T_max]``."""
    if not isinstance(horizon, tuple):
        return jnp.asarray(horizon, jnp.int32)
    low, high = horizon
    log_t = jax.random.uniform(key, (), minval=np.log(low), maxval=np.log(high + 1))
    return jnp.clip(jnp.floor(jnp.exp(log_t)), low, high).astype(jnp.int32)


def _flatten_theta(theta: Any) -> tuple[jax.Array, Callable]:
    """``ravel_pytree(theta)`` after checking theta is a non-empty tree of float arrays (a
    perturbation of an integer leaf would be silently rounded away)."""
    leaves = jax.tree_util.tree_leaves_with_path(theta)
    bad = [
        f"{jax.tree_util.keystr(path)}: {jnp.result_type(leaf)}"
        for path, leaf in leaves
        if not jnp.issubdtype(jnp.result_type(leaf), jnp.floating)
    ]
    if bad or not leaves:
        raise ValueError(
            "theta must be a non-empty pytree of floating-point arrays (cast integer entries to "
            f"float32); got {bad or 'no leaves'}"
        )
    return ravel_pytree(theta)


def _twin_thetas(flat_theta: jax.Array, unravel: Callable, eps: jax.Array) -> Any:
    """theta pytrees with a leading twin axis: ``theta + eps`` and ``theta - eps``."""
    signs = jnp.array([1.0, -1.0], flat_theta.dtype)
    return jax.vmap(unravel)(flat_theta[None] + signs[:, None] * eps[None])


def _check_same_layout(init_state: Any, stepped_state: Any) -> None:
    layout = lambda tree: jax.tree.map(lambda x: (jnp.shape(x), jnp.result_type(x)), tree)
    if layout(init_state) != layout(stepped_state):
        raise TypeError(
            "the system's init_state and step must return states with the same structure, shapes "
            f"and dtypes; init_state gave {layout(init_state)}, step gave {layout(stepped_state)}"
        )


# fold_in tag of the stream a TBPTT pair derives a new problem's keys from (far from the small
# indices that split's keys coincide with).
_PROBLEM_STREAM = 0x51A7E


def _problem_keys(key: jax.Array) -> jax.Array:
    """TBPTT's ``[4]`` keys (config, horizon, noise, init) of the problem a pair starts while
    holding ``key``: derivable from the key the pair holds at the problem's step 0, so the window
    that runs the first step can rebuild the initial state (``_restart_unstepped``)."""
    return jax.random.split(jax.random.fold_in(key, _PROBLEM_STREAM), 4)


def _fresh_problem(
    system: UnrolledSystem,
    config: EngineConfig,
    flat_theta: jax.Array,
    unravel: Callable,
    keys: jax.Array,
) -> _Problem:
    """A new inner problem for one pair: config, horizon, noise and the twins' initial states.

    ``keys``: ``[4]`` keys (config, horizon, noise, init). The ES estimators split them together
    with the pair's own keys so that a step costs one split (random-bit kernels dominate compile
    time on CPU); TBPTT derives them with ``_problem_keys``.
    """
    config_key, horizon_key, noise_key, init_key = keys
    task_config = system.sample_config(config_key)
    horizon = sample_horizon(horizon_key, config.horizon)
    if estimators.uses_noise(config.estimator):
        eps = config.sigma * jax.random.normal(noise_key, flat_theta.shape, flat_theta.dtype)
    else:
        eps = jnp.zeros_like(flat_theta)
    thetas = _twin_thetas(flat_theta, unravel, eps)
    init = jax.vmap(system.init_state, in_axes=(0, None, None, None))
    return _Problem(init(thetas, init_key, task_config, horizon), task_config, horizon, eps)


def _new_pair(
    system: UnrolledSystem, config: EngineConfig, flat_theta, unravel, key_data
) -> Particles:
    if estimators.uses_noise(config.estimator):
        key, *problem_keys = jax.random.split(jax.random.wrap_key_data(key_data), 5)
        problem_keys = jnp.stack(problem_keys)
    else:
        key = jax.random.wrap_key_data(key_data)
        problem_keys = _problem_keys(key)
    problem = _fresh_problem(system, config, flat_theta, unravel, problem_keys)
    noise = estimators.noise_at_reset(problem.eps, jnp.array(False))
    return Particles(
        state=problem.state,
        config=problem.config,
        step=jnp.zeros((), jnp.int32),
        horizon=problem.horizon,
        noise=noise,
        key=jax.random.key_data(key),
    )


def _start_window(config: EngineConfig, pair: Particles) -> Particles:
    """One pair's window-start rule (a no-op for ES-Single, full ES and TBPTT): new noise for PES,
    GPES and TES, and for TES both twins restart from the ``+eps`` twin's state."""
    if not estimators.redraws_at_window_start(config.estimator):
        return pair
    key, noise_key = jax.random.split(jax.random.wrap_key_data(pair.key))
    fresh = config.sigma * jax.random.normal(noise_key, pair.noise.eps.shape, pair.noise.eps.dtype)
    noise = estimators.noise_at_window_start(
        config.estimator, config.resample_every, pair.noise, fresh
    )
    state = pair.state
    if estimators.shares_state_at_window_start(config.estimator):
        due = estimators.redraw_due(config.estimator, config.resample_every, pair.noise)
        shared = jax.tree.map(lambda x: jnp.broadcast_to(x[:1], x.shape), state)
        state = optax.tree.where(due, shared, state)
    return pair._replace(state=state, noise=noise, key=jax.random.key_data(key))


def _step_twins(
    system: UnrolledSystem, flat_theta: jax.Array, unravel: Callable, pair: Particles, key
) -> tuple[Any, jax.Array]:
    """Both twins' step with their perturbed thetas and one shared key: ``(state, losses [2])``."""
    thetas = _twin_thetas(flat_theta, unravel, pair.noise.eps)
    stepper = jax.vmap(system.step, in_axes=(0, 0, None, None))
    state, losses = stepper(thetas, pair.state, key, pair.config)
    if jnp.shape(losses) != (2,):
        raise ValueError(
            f"the system's step must return a scalar loss, got shape {jnp.shape(losses)[1:]}"
        )
    return state, losses.astype(jnp.float32)


def _pair_step(
    system: UnrolledSystem,
    config: EngineConfig,
    flat_theta: jax.Array,
    unravel: Callable,
    pair: Particles,
    mid_window: jax.Array,
) -> tuple[Particles, jax.Array, jax.Array, jax.Array]:
    """One inner step of one pair's twins, then a reset if due.

    Returns ``(pair, losses [2], finite [], reset [])``: ``finite`` is False when a twin loss (or
    their difference) is not finite; such a pair is reset too.
    """
    if estimators.uses_noise(config.estimator):
        keys = jax.random.split(jax.random.wrap_key_data(pair.key), 6)
        key, step_key, problem_keys = keys[0], keys[1], keys[2:]
    else:
        key, step_key = jax.random.split(jax.random.wrap_key_data(pair.key))
        problem_keys = _problem_keys(key)
    state, losses = _step_twins(system, flat_theta, unravel, pair, step_key)
    step = pair.step + 1
    finite = jnp.all(jnp.isfinite(losses)) & jnp.isfinite(losses[0] - losses[1])
    reset = (step >= pair.horizon) | ~finite
    key_data = jax.random.key_data(key)

    def renewed() -> Particles:
        problem = _fresh_problem(system, config, flat_theta, unravel, problem_keys)
        _check_same_layout(problem.state, state)
        noise = estimators.noise_at_reset(problem.eps, mid_window)
        step = jnp.zeros_like(pair.step)
        return Particles(problem.state, problem.config, step, problem.horizon, noise, key_data)

    def continued() -> Particles:
        return Particles(state, pair.config, step, pair.horizon, pair.noise, key_data)

    if config.pairs_per_chunk != 1:
        return optax.tree.where(reset, renewed(), continued()), losses, finite, reset

    # One pair at a time, a real branch skips building a fresh problem on the (T - 1) / T of
    # steps that do not reset. Under shard_map both branches must vary across devices alike:
    # select(reset, x, x) makes every leaf vary like `reset`, and XLA folds it away.
    def varying_like_reset(branch: Callable[[], Particles]) -> Callable[[], Particles]:
        def run() -> Particles:
            out = branch()
            return optax.tree.where(reset, out, out)

        return run

    new_pair = jax.lax.cond(reset, varying_like_reset(renewed), varying_like_reset(continued))
    return new_pair, losses, finite, reset


def _restart_unstepped(
    system: UnrolledSystem, flat_theta: jax.Array, unravel: Callable, pair: Particles
) -> Particles:
    """TBPTT: a pair whose problem has not taken a step yet starts it in this window, so its
    initial state is rebuilt (same keys) under the theta being differentiated. The gradient then
    sees ``init_state``'s dependence on theta whether the reset fell on the window boundary or
    inside a window, and with ``K >= T`` in lockstep TBPTT is full backpropagation."""
    init_key = _problem_keys(jax.random.wrap_key_data(pair.key))[3]
    thetas = _twin_thetas(flat_theta, unravel, pair.noise.eps)
    init = jax.vmap(system.init_state, in_axes=(0, None, None, None))
    state = init(thetas, init_key, pair.config, pair.horizon)
    return pair._replace(state=optax.tree.where(pair.step == 0, state, pair.state))


def _pair_window(
    system: UnrolledSystem, config: EngineConfig, flat_theta, unravel, pair: Particles
) -> tuple[Particles, _Sums]:
    """``K`` steps of one pair (``lax.scan``), accumulating what the estimators need."""

    def body(carry, index):
        pair, sums = carry
        xi = pair.noise.xi
        pair, losses, finite, reset = _pair_step(
            system, config, flat_theta, unravel, pair, index < config.window - 1
        )
        diff = jnp.where(finite, losses[0] - losses[1], 0.0)
        sums = _Sums(
            weighted=sums.weighted + xi * diff,
            count=sums.count + finite.astype(jnp.int32),
            loss_sum=sums.loss_sum + jnp.where(finite, jnp.mean(losses), 0.0),
            diff_sum=sums.diff_sum + diff,
            nonfinite=sums.nonfinite + (~finite).astype(jnp.int32),
            resets=sums.resets + reset.astype(jnp.int32),
        )
        return (pair, sums), None

    # Zeros shaped from the pair's own data, so that under shard_map they carry its
    # device-varying type, as the scan's outputs do.
    zero_i, zero_f = jnp.zeros_like(pair.step), jnp.zeros_like(pair.step, jnp.float32)
    sums = _Sums(jnp.zeros_like(pair.noise.xi), zero_i, zero_f, zero_f, zero_i, zero_i)
    (pair, sums), _ = jax.lax.scan(body, (pair, sums), jnp.arange(config.window))
    return pair, sums


def unroll_window(
    system: UnrolledSystem,
    config: EngineConfig,
    theta: Any,
    particles: Particles,
    axis_name: str | None = None,
) -> tuple[Particles, WindowOutputs]:
    """Run one window of every pair here (no cross-device sums): per-pair outputs, ``[N, ...]``.

    Applies the estimator's window-start noise rule, steps ``K`` times, and computes each pair's
    gradient estimate ``g_j``: the ES formula for ES estimators, ``jax.grad`` of the pair's masked
    mean window loss for TBPTT (state entering the window held fixed, except that a problem whose
    first step is in the window, after a reset at the window's start or inside it, is initialised
    under the differentiated theta; a pair whose gradient is not finite contributes zero and is
    counted in ``nonfinite``). Under ``shard_map`` pass the mesh ``axis_name``: TBPTT then
    differentiates a device-varying copy of theta, since the gradient of a replicated input would
    be summed over devices.
    """
    flat_theta, unravel = _flatten_theta(theta)
    particles = jax.vmap(functools.partial(_start_window, config))(particles)
    run = lambda flat, pair: _pair_window(system, config, flat, unravel, pair)
    if config.estimator == "tbptt":
        if axis_name is not None:
            flat_theta = jax.lax.pcast(flat_theta, axis_name, to="varying")

        def mean_window_loss(flat, pair):
            pair = _restart_unstepped(system, flat, unravel, pair)
            pair, sums = run(flat, pair)
            return sums.loss_sum / jnp.maximum(sums.count, 1), (pair, sums)

        pair_grad = jax.value_and_grad(mean_window_loss, has_aux=True)
        pair_grad = functools.partial(pair_grad, flat_theta)
        (_, (particles, sums)), grad = _over_pairs(config, pair_grad, particles)
        finite_grad = jnp.all(jnp.isfinite(grad), axis=-1)
        grad = jnp.where(finite_grad[:, None], grad, 0.0)
        sums = sums._replace(nonfinite=sums.nonfinite + (~finite_grad).astype(jnp.int32))
    else:
        particles, sums = _over_pairs(config, functools.partial(run, flat_theta), particles)
        grad = estimators.pair_gradient(sums.weighted, sums.count, config.sigma)
    loss_diff = sums.diff_sum / jnp.maximum(sums.count, 1)
    if config.shaping == "sign":
        grad = estimators.sign_shaped(grad, loss_diff, config.sigma)
    outputs = WindowOutputs(
        grad=grad,
        count=sums.count,
        loss_sum=sums.loss_sum,
        loss_diff=loss_diff,
        nonfinite=sums.nonfinite,
        resets=sums.resets,
    )
    return particles, outputs


def window_step(
    system: UnrolledSystem,
    config: EngineConfig,
    theta: Any,
    particles: Particles,
    axis_name: str | None = None,
) -> tuple[Particles, Estimate]:
    """K inner steps of all particles and the estimate of d meta_loss / d theta.

    Not jitted: the caller jits it (``system`` as a pytree argument, ``config`` and ``axis_name``
    static) or ``shard_map``s it. With ``axis_name`` the particles are one device's shard and the
    returned estimate is the global one (sums ``psum``-ed over the axis).
    """
    _, unravel = _flatten_theta(theta)
    particles, outputs = unroll_window(system, config, theta, particles, axis_name)
    flat_grad, meta_loss, diagnostics = estimators.combine(outputs, config.window, axis_name)
    return particles, Estimate(unravel(flat_grad), meta_loss, diagnostics)


def _burn_in(
    system: UnrolledSystem,
    config: EngineConfig,
    theta: Any,
    particles: Particles,
    offsets: jax.Array,
) -> tuple[Particles, jax.Array]:
    """Advance pair j by ``offsets[j]`` steps; returns the particles and ``max(offsets)``.

    The twins run under their own eps, and the estimator's window-start rule is applied every
    ``K`` steps, so a pair arrives in the state it would have reached by running windows. Offsets
    lie below the horizon, so no pair finishes its problem here. Losses are not looked at: a pair
    that goes non-finite is masked, counted and reset at its first window step.
    """
    flat_theta, unravel = _flatten_theta(theta)

    def advance(pair, offset):
        def body(index, pair):
            pair = jax.lax.cond(
                index % config.window == 0, lambda: _start_window(config, pair), lambda: pair
            )
            key, step_key = jax.random.split(jax.random.wrap_key_data(pair.key))
            state, _ = _step_twins(system, flat_theta, unravel, pair, step_key)
            return pair._replace(state=state, step=pair.step + 1, key=jax.random.key_data(key))

        return jax.lax.fori_loop(0, offset, body, pair)

    return _over_pairs(config, advance, particles, offsets), jnp.max(offsets)


def _over_pairs(config: EngineConfig, fn: Callable, *pair_args: Any) -> Any:
    """``vmap(fn)`` over the leading pair axis of ``pair_args``, ``config.pairs_per_chunk`` pairs at
    a time (``lax.map`` over the chunks; all at once when it is None)."""
    if config.pairs_per_chunk is None:
        return jax.vmap(fn)(*pair_args)
    unpack = lambda args: fn(*args)
    if config.pairs_per_chunk == 1:
        # Not batch_size=1: that vmaps a chunk of one, turning every lax.cond into a select.
        return jax.lax.map(unpack, pair_args)
    return jax.lax.map(unpack, pair_args, batch_size=config.pairs_per_chunk)


def _init(system, config: EngineConfig, theta: Any, key: jax.Array):
    flat_theta, unravel = _flatten_theta(theta)
    pairs_key, offsets_key = jax.random.split(key)
    pair_keys = jax.random.key_data(jax.random.split(pairs_key, config.num_pairs))
    new_pair = functools.partial(_new_pair, system, config, flat_theta, unravel)
    particles = jax.vmap(new_pair)(pair_keys)
    if not config.stagger:
        return particles, jnp.zeros((), jnp.int32)
    uniform = jax.random.uniform(offsets_key, (config.num_pairs,))
    offsets = jnp.minimum(jnp.floor(uniform * particles.horizon), particles.horizon - 1)
    return _burn_in(system, config, theta, particles, offsets.astype(jnp.int32))


def init_particles(
    system: UnrolledSystem,
    config: EngineConfig,
    theta: Any,
    key: jax.Array,
    *,
    compiler_options: dict[str, Any] | None = None,
) -> tuple[Particles, int]:
    """Fresh particles (leading axis ``num_pairs``) and the number of burn-in steps run.

    With ``config.stagger`` each pair gets a target offset uniform in ``[0, its horizon)`` and is
    really advanced there (twins under ``theta +- eps``, the estimator's noise rule every ``K``
    steps); the returned int is the number of sequential inner steps of that burn-in,
    ``max(offsets)``, each a step of all ``2 N`` particles. Lockstep: every pair at step 0, 0 steps.
    ``key`` is a new-style key (``jax.random.key``) or legacy ``PRNGKey`` data.
    ``compiler_options``: XLA options for this jitted initialisation, e.g.
    ``{"xla_backend_optimization_level": 0}`` compiles a system of cheap steps several times faster.
    """
    if not jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
        key = jax.random.wrap_key_data(key)
    options = tuple(sorted((compiler_options or {}).items()))
    program = _init_program_config(config)
    particles, num_steps = _call_jitted(_init, system, program, options, theta, key)
    return particles, int(num_steps)


def particles_shape(system: UnrolledSystem, config: EngineConfig, theta: Any) -> Particles:
    """The particles' structure with ``jax.ShapeDtypeStruct`` leaves, computing and compiling
    nothing (e.g. the target to restore a checkpoint into)."""
    lockstep = dataclasses.replace(config, stagger=False)
    return jax.eval_shape(lambda th: _init(system, lockstep, th, jax.random.key(0))[0], theta)


def _init_program_config(config: EngineConfig) -> EngineConfig:
    """What ``_init`` depends on, so configs that only differ elsewhere share one compile: the
    window and estimator only matter to a burn-in with window-start redraws."""
    if config.stagger and estimators.redraws_at_window_start(config.estimator):
        return config
    estimator = "es_single" if estimators.uses_noise(config.estimator) else "tbptt"
    return dataclasses.replace(config, window=1, estimator=estimator, resample_every=1)


def _call_jitted(
    fn: Callable, system: Any, config: EngineConfig, options: tuple, *args: Any
) -> Any:
    """``jax.jit(fn)(system, config, *args)`` with the system's array leaves as arguments and its
    other leaves and structure static (so a system's data are buffers, not compiled constants);
    ``options``: sorted ``(name, value)`` XLA compiler options."""
    leaves, treedef = jax.tree.flatten(system)
    is_array = [isinstance(leaf, jax.Array | np.ndarray) for leaf in leaves]
    arrays = [leaf for leaf, array in zip(leaves, is_array, strict=True) if array]
    static = tuple(None if array else leaf for leaf, array in zip(leaves, is_array, strict=True))
    try:
        hash((treedef, static))
    except TypeError as error:
        raise TypeError(
            "the system must be a pytree (e.g. a flax.struct.PyTreeNode) whose non-array parts "
            f"are hashable, or a hashable object; got {type(system).__name__}: {error}"
        ) from error
    return _jit(options)(fn, treedef, static, config, arrays, *args)


def _with_system(fn, treedef, static, config, arrays, *args):
    arrays = iter(arrays)
    leaves = [next(arrays) if leaf is None else leaf for leaf in static]
    return fn(jax.tree.unflatten(treedef, leaves), config, *args)


def _jit(options: tuple) -> Callable:
    """``_with_system`` under ``jax.jit`` with these compiler options. A new wrapper per call:
    jax's own trace and compile caches (keyed on the function, static arguments, shapes and
    options) make a repeated call compile nothing. A wrapper cached per options set saved no
    compile time and no reproducible time per repeated call
    (``benchmarks/results/jit_cache.json``, from ``benchmarks/jit_cache.py``)."""
    return jax.jit(_with_system, static_argnums=(0, 1, 2, 3), compiler_options=dict(options))
