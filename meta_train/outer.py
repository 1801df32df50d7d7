"""The outer step: one jitted, buffer-donating call that advances every particle of every task group
by one window on every device of a mesh, combines the groups' estimates, and updates theta.

The particle axis of each group is sharded over a one-axis mesh (``jax.shard_map``, the mechanism
``jax.pmap`` is built on); theta, the outer optimizer state and the systems are replicated. The
engine ``psum``s its sums over the mesh axis, so every device holds the same global estimate and
the outer update runs replicated. All per-pair randomness lives in the particles' keys, so the
result does not depend on how many devices share the pairs.

Groups (one per static task configuration) are combined as

    g = sum_i w_i g_i / sum_i w_i,      meta_loss = sum_i w_i L_i / sum_i w_i.

An estimate with a non-finite entry leaves theta and the outer state unchanged (counted as a
skipped update) rather than poisoning theta.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.flatten_util import ravel_pytree
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from meta_train.es import engine, estimators
from meta_train.es.system import UnrolledSystem
from meta_train.metrics import OuterMetrics

AXIS = "particles"


class TaskGroup(NamedTuple):
    """One static task configuration meta-trained with its own particles."""

    name: str
    system: UnrolledSystem
    engine_config: engine.EngineConfig
    weight: float


class MetaState(NamedTuple):
    """Everything an outer step changes; the whole of it is checkpointed.

    Attributes:
      step: ``[]`` int32, outer steps done.
      theta: the meta-parameters.
      outer_state: the outer optax optimizer's state.
      particles: one ``engine.Particles`` per group; leading axis ``num_pairs``, sharded.
    """

    step: jax.Array
    theta: Any
    outer_state: optax.OptState
    particles: tuple[Any, ...]


def make_mesh(num_devices: int = 0) -> Mesh:
    """A one-axis mesh named ``AXIS`` over the first ``num_devices`` devices (0: all).

    After ``jax.distributed.initialize`` the devices are those of every process, so the particles
    are split over all hosts and the engine's ``psum`` spans them.
    """
    devices = jax.devices()
    if num_devices > len(devices):
        raise ValueError(f"num_devices={num_devices} but only {len(devices)} devices exist")
    devices = devices[: num_devices or len(devices)]
    return Mesh(np.asarray(devices), (AXIS,))


def put(tree: Any, sharding: NamedSharding) -> Any:
    """Lay out a pytree that every process holds in full (host or local arrays) as global arrays
    with ``sharding``; each process supplies the pieces its own devices hold."""

    def put_leaf(leaf):
        value = np.asarray(jax.device_get(leaf))
        return jax.make_array_from_callback(value.shape, sharding, lambda index: value[index])

    return jax.tree.map(put_leaf, tree)


class ThetaAverageState(NamedTuple):
    """State of ``track_theta_average``: ``average`` has theta's structure."""

    average: Any


def track_theta_average(decay: float) -> optax.GradientTransformation:
    """Keeps an exponential moving average of the parameters after each update, and passes the
    updates through unchanged (last in a chain)::

        average_0 = theta_0,   average_t = decay average_{t-1} + (1 - decay) (theta_{t-1} + u_t)

    Under a noisy estimate theta jitters around the point the signal holds it at; the average
    over the last ``1 / (1 - decay)`` steps or so removes most of that jitter (Polyak averaging)
    and trails a steady drift by ``decay / (1 - decay)`` steps.
    """

    def init(params):
        return ThetaAverageState(jax.tree.map(jnp.copy, params))

    def update(updates, state, params=None):
        if params is None:
            raise ValueError("track_theta_average needs the parameters: pass params to update")
        average = jax.tree.map(
            lambda a, p, u: decay * a + (1.0 - decay) * (p + u), state.average, params, updates
        )
        return updates, ThetaAverageState(average)

    return optax.GradientTransformation(init, update)


class OuterSettings(NamedTuple):
    """The outer optimizer: ``chain(clip_by_global_norm(clip_norm), <optimizer>(schedule))``, and
    with ``average_decay > 0`` ``track_theta_average(average_decay)`` after it.

    ``optimizer``: ``adam``, ``sgd`` or ``sgdm`` (momentum 0.9); ``schedule``: ``constant`` (after
    a linear warm-up of ``warmup_steps``) or ``cosine`` (warm-up, then cosine decay to 0 at
    ``num_steps``). With the average, the exported and evaluated theta is the average
    (``theta_to_export``); the particles run on theta itself. Hashable, so it can key the
    compiled outer step.
    """

    optimizer: str = "adam"
    learning_rate: float = 3e-4
    clip_norm: float = 1.0
    schedule: str = "constant"
    warmup_steps: int = 0
    num_steps: int = 1
    average_decay: float = 0.0

    def build(self) -> tuple[optax.GradientTransformation, optax.Schedule]:
        """The optax transformation and its learning-rate schedule."""
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be positive, got {self.learning_rate!r}")
        if not self.clip_norm > 0:
            raise ValueError(f"clip_norm must be positive, got {self.clip_norm!r}")
        if self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be at least 0, got {self.warmup_steps!r}")
        if not 0.0 <= self.average_decay < 1.0:
            raise ValueError(
                f"average_decay must be in [0, 1) (0: export theta itself), got "
                f"{self.average_decay!r}"
            )
        peak, warmup = self.learning_rate, self.warmup_steps
        if self.schedule == "constant":
            lr = optax.join_schedules(
                [optax.linear_schedule(0.0, peak, warmup)] * bool(warmup)
                + [optax.constant_schedule(peak)],
                [warmup] * bool(warmup),
            )
        elif self.schedule == "cosine":
            lr = optax.warmup_cosine_decay_schedule(
                0.0, peak, warmup, max(self.num_steps, warmup + 1)
            )
        else:
            raise ValueError(f"unknown outer schedule {self.schedule!r}; use constant or cosine")
        optimizers = {
            "adam": lambda: optax.adam(lr),
            "sgd": lambda: optax.sgd(lr),
            "sgdm": lambda: optax.sgd(lr, momentum=0.9),
        }
        if self.optimizer not in optimizers:
            raise ValueError(
                f"unknown outer optimizer {self.optimizer!r}; use one of {', '.join(optimizers)}"
            )
        chain = [optax.clip_by_global_norm(self.clip_norm), optimizers[self.optimizer]()]
        if self.average_decay:
            chain.append(track_theta_average(self.average_decay))
        return optax.chain(*chain), lr


def theta_to_export(settings: OuterSettings, state: MetaState) -> Any:
    """The theta a run exports and evaluates: the running average with ``average_decay``, else
    theta itself."""
    if not settings.average_decay:
        return state.theta
    return state.outer_state[-1].average


class _GroupProgram(NamedTuple):
    """What a group contributes to the compiled outer step: everything but the system's arrays
    (which are arguments, so a task family's data are buffers rather than compile-time constants,
    as in ``engine``). Hashable."""

    name: str
    treedef: Any
    static: tuple[Any, ...]
    engine_config: engine.EngineConfig
    weight: float

    def system(self, arrays: list[jax.Array]) -> UnrolledSystem:
        arrays = iter(arrays)
        leaves = [next(arrays) if leaf is None else leaf for leaf in self.static]
        return jax.tree.unflatten(self.treedef, leaves)


def _split_group(group: TaskGroup) -> tuple[_GroupProgram, list[jax.Array]]:
    flat, treedef = jax.tree.flatten(group.system)
    is_array = [isinstance(leaf, jax.Array | np.ndarray) for leaf in flat]
    arrays = [leaf for leaf, array in zip(flat, is_array, strict=True) if array]
    static = tuple(None if array else leaf for leaf, array in zip(flat, is_array, strict=True))
    program = _GroupProgram(group.name, treedef, static, group.engine_config, group.weight)
    return program, arrays


def particle_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (pair) axis split over the mesh."""
    return NamedSharding(mesh, P(AXIS))


def init_meta_state(
    groups: Sequence[TaskGroup],
    theta: Any,
    settings: OuterSettings,
    key: jax.Array,
    mesh: Mesh,
) -> tuple[MetaState, list[int]]:
    """The initial ``MetaState`` and the number of burn-in inner steps of each group.

    Each group's particles come from ``engine.init_particles`` (staggered ones burnt in to their
    offsets under ``theta``) and are then laid out sharded over the mesh.
    """
    replicated = NamedSharding(mesh, P())
    keys = jax.random.split(key, len(groups))
    particles, burn_in_steps = [], []
    for group, group_key in zip(groups, keys, strict=True):
        group_particles, steps = engine.init_particles(
            group.system, group.engine_config, theta, group_key
        )
        particles.append(put(group_particles, particle_sharding(mesh)))
        burn_in_steps.append(steps)
    step = jnp.zeros((), jnp.int32)
    replicated_parts = put((step, theta, settings.build()[0].init(theta)), replicated)
    return MetaState(*replicated_parts, tuple(particles)), burn_in_steps


def abstract_meta_state(
    groups: Sequence[TaskGroup],
    theta: Any,
    settings: OuterSettings,
    mesh: Mesh,
) -> MetaState:
    """The ``MetaState``'s structure as ``jax.ShapeDtypeStruct`` leaves with their shardings, to
    restore a checkpoint into; nothing is computed or compiled."""
    particles = [
        engine.particles_shape(group.system, group.engine_config, theta) for group in groups
    ]
    step = jax.ShapeDtypeStruct((), jnp.int32)
    outer_state = jax.eval_shape(settings.build()[0].init, theta)
    state = MetaState(step, jax.eval_shape(lambda t: t, theta), outer_state, tuple(particles))
    sharded = lambda tree, sharding: jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), tree
    )
    return state._replace(
        step=sharded(state.step, NamedSharding(mesh, P())),
        theta=sharded(state.theta, NamedSharding(mesh, P())),
        outer_state=sharded(state.outer_state, NamedSharding(mesh, P())),
        particles=sharded(state.particles, particle_sharding(mesh)),
    )


def _weighted_sum(values: Sequence[Any], weights: np.ndarray) -> Any:
    return jax.tree.map(lambda *xs: sum(w * x for w, x in zip(weights, xs, strict=True)), *values)


def _all_finite(tree: Any) -> jax.Array:
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))


class OuterStep:
    """``outer_step(state) -> (state, metrics, group_meta_losses)``: jitted, donates ``state``.

    ``metrics`` is an ``OuterMetrics`` of this step; ``group_meta_losses`` maps a group name to its
    meta-loss. ``compile(state)`` compiles ahead of time, so compile time is measured apart from
    run time. Compiled programs are kept per process (the last few), keyed by everything that
    shapes them, so a second run of the same configuration (a resume in the same process, a sweep
    over seeds) does not compile again.
    """

    def __init__(self, groups: Sequence[TaskGroup], settings: OuterSettings, mesh: Mesh):
        programs, arrays = zip(*(_split_group(group) for group in groups), strict=True)
        self.program = (tuple(programs), settings, mesh)
        self.arrays = put(list(arrays), NamedSharding(mesh, P()))
        self.compiled = None
        # XLA:CPU runs all of a host's devices on one thread pool, and a collective holds a thread
        # while it waits for its peers. With one device per core and steps left to overlap
        # (asynchronous dispatch), long runs of the main job aborted when an all-reduce peer did
        # not arrive within XLA's collective timeout; finishing each step first, none did.
        self.finish_each_step = mesh.size > 1 and mesh.devices.flat[0].platform == "cpu"

    def compile(self, state: MetaState) -> float:
        """Compile for ``state``'s shapes and shardings; return the seconds it took (0 when this
        process compiled the same program before)."""
        signature = jax.tree.map(lambda x: (x.shape, x.dtype, x.sharding), (state, self.arrays))
        key = (self.program, jax.tree.structure(signature), tuple(jax.tree.leaves(signature)))
        if key in _COMPILED:
            _COMPILED.move_to_end(key)
            self.compiled = _COMPILED[key]
            return 0.0
        start = time.perf_counter()
        jitted = jax.jit(_outer_step_fn(*self.program), donate_argnums=0)
        self.compiled = jitted.lower(state, self.arrays).compile()
        _COMPILED[key] = self.compiled
        while len(_COMPILED) > _MAX_COMPILED:
            _COMPILED.popitem(last=False)
        return time.perf_counter() - start

    def __call__(self, state: MetaState) -> tuple[MetaState, OuterMetrics, dict[str, jax.Array]]:
        if self.compiled is None:
            self.compile(state)
        outputs = self.compiled(state, self.arrays)
        if self.finish_each_step:
            jax.block_until_ready(outputs)
        return outputs


# A fresh jax.jit wrapper per OuterStep misses jax's own caches (they key on the function), so
# without this a second run of the same configuration in one process compiles the whole outer step
# again; with it, it compiles nothing, and its steps run the same compiled program.
_COMPILED: collections.OrderedDict = collections.OrderedDict()
_MAX_COMPILED = 4


def _outer_step_fn(
    programs: tuple[_GroupProgram, ...], settings: OuterSettings, mesh: Mesh
) -> Callable:
    outer_optimizer, learning_rate = settings.build()
    weights = np.asarray([program.weight for program in programs], np.float64)
    weights = (weights / weights.sum()).astype(np.float32)

    def windows(theta, particles, arrays):
        _, unravel = ravel_pytree(theta)
        stepped, totals = [], []
        for i, program in enumerate(programs):
            pairs, outputs = engine.unroll_window(
                program.system(arrays[i]), program.engine_config, theta, particles[i], AXIS
            )
            stepped.append(pairs)
            totals.append(estimators.local_totals(outputs))
        # Every group's sums in one collective, not one per group and sum.
        totals = estimators.psum_as_one(totals, AXIS)
        estimates = []
        for program, group_totals in zip(programs, totals, strict=True):
            flat_grad, meta_loss, diagnostics = estimators.finish(
                group_totals, program.engine_config.window
            )
            estimates.append(engine.Estimate(unravel(flat_grad), meta_loss, diagnostics))
        return tuple(stepped), tuple(estimates)

    sharded_windows = jax.shard_map(
        windows,
        mesh=mesh,
        in_specs=(P(), P(AXIS), P()),
        out_specs=(P(AXIS), P()),
        check_vma=False,
    )

    def outer_step(state: MetaState, arrays):
        particles, estimates = sharded_windows(state.theta, state.particles, arrays)
        grad = _weighted_sum([e.grad for e in estimates], weights)
        meta_loss = _weighted_sum([e.meta_loss for e in estimates], weights)
        updates, outer_state = outer_optimizer.update(grad, state.outer_state, state.theta)
        finite = _all_finite(grad)
        # Not optax.apply_if_finite: that tests the updates and adds a state (counters) around the
        # outer optimizer's, so checkpoints of this outer state would no longer restore.
        keep_if_finite = lambda new, old: jax.tree.map(
            lambda n, o: jnp.where(finite, n, o), new, old
        )
        theta = keep_if_finite(optax.apply_updates(state.theta, updates), state.theta)
        outer_state = keep_if_finite(outer_state, state.outer_state)
        diagnostics = _weighted_sum([e.diagnostics for e in estimates], weights)
        metrics = OuterMetrics.single_from_model_output(
            meta_loss=meta_loss,
            estimate_norm=optax.tree.norm(grad),
            masked_fraction=diagnostics["masked_fraction"],
            nonfinite_count=sum(e.diagnostics["nonfinite_count"] for e in estimates),
            loss_diff_std=diagnostics["loss_diff_std"],
            num_resets=sum(e.diagnostics["num_resets"] for e in estimates),
            skipped_update=1.0 - finite.astype(jnp.float32),
            outer_lr=jnp.asarray(learning_rate(state.step), jnp.float32),
            theta_norm=optax.tree.norm(theta),
            update_norm=optax.tree.norm(jax.tree.map(jnp.subtract, theta, state.theta)),
        )
        group_losses = {p.name: e.meta_loss for p, e in zip(programs, estimates, strict=True)}
        new_state = MetaState(state.step + 1, theta, outer_state, particles)
        return new_state, metrics, group_losses

    return outer_step


def inner_steps_per_outer_step(groups: Sequence[TaskGroup]) -> int:
    """Inner training steps one outer step performs: 2 twins x pairs x K, summed over groups."""
    return sum(2 * g.engine_config.num_pairs * g.engine_config.window for g in groups)
