"""Meta-training throughput on the reference configuration, against a hand-written ES baseline and
against plain Adam training of the same particles.

Reference run: per-parameter MLP optimizer (two hidden layers of 32), inner task MLP 64-32-32-10
ReLU on digits with batch 128 (family ``mlp_digits``), 32 antithetic pairs (64 inner trainings),
K = 10, T = 200, sigma = 0.01, outer Adam 3e-4. Measured in one process, interleaved round by
round so machine load hits every variant alike:

* ``engine``: ``meta_train.outer.OuterStep`` (ES-Single, staggered particles, sharded over a mesh
  of 1 and of 2 devices): the meta-trainer's own outer step;
* ``evosax``: evosax's ``NoiseReuseES`` (ask / tell) around a vmapped, ``lax.scan``ned inner loop of
  the same optimizer on the same task (lockstep particles, twins sharing init and minibatches, one
  jitted buffer-donating call per outer step): what a competent JAX user would write;
* ``adam``: the same 64 inner trainings stepped with ``optax.adam`` and no estimator (vmapped,
  scanned K steps per call, sharded like the engine): the ceiling for the engine's own overhead.

``--pretrained`` measures the recipe that ships instead: the config recorded in the training record
of the default pretrained optimizer (``lopt.pretrained_info()["config"]``; ``--pretrained NAME``
for another shipped version; for ``normalized-v8``: seven groups of 8 pairs with their
augmentation, the orthogonalized normalized rule with its step gain and weight decay, K = 20,
horizons log-uniform in [50, 500]): the engine as ``lopt meta-train`` runs it (its chunking on this
platform) and with all pairs at once, against plain AdamW on the same augmented trainings (the
ceiling), and ablated unrolls of those trainings (the rule at a fixed theta, SGD, SGD without
augmentation, SGD on one batch) whose differences give where a step's time goes (``breakdown``).

It prints compile times, inner particle-steps per second (median over rounds), their ratios, and
peak memory, and writes ``meta_train_throughput[_<mode>].json`` (into ``benchmarks/results/`` with
``--record``, else a scratch folder; ``benchmarks/output.py``).

    python -m benchmarks.meta_train_throughput --record          # reference configuration
    python -m benchmarks.meta_train_throughput --quick           # tiny, about a minute
    python -m benchmarks.meta_train_throughput --accelerator     # 4096 trainings (GPU / TPU)
    python -m benchmarks.meta_train_throughput --pretrained --devices 2 --pairs-per-chunk all

On a CPU it forces two host devices (``XLA_FLAGS``) before jax starts, so the 2-device runs share
the same cores as the 1-device runs: they measure how well sharding uses the cores, not more
hardware. evosax is a benchmark-only dependency (``pip install -c constraints.txt -e ".[bench]"``);
without it the evosax row is skipped. The JSON carries ``provenance`` (commit, versions, argv,
date, platform, devices, load average before the run) and the load average after each round.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.metadata
import json
import os
import resource
import statistics
import sys
import time
from typing import Any, NamedTuple

if "--help" not in sys.argv and "-h" not in sys.argv:
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_force_host_platform_device_count" not in flags:
        os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count=2".strip()

import jax
import jax.numpy as jnp
import ml_collections
import optax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import lopt
from benchmarks import output
from benchmarks.provenance import provenance
from lopt import shipped
from meta_train import config_flags, outer, train, unrolled_tasks
from meta_train.es import engine
from meta_train.evaluation import inner_training
from tasks import augment, registry


class Setting(NamedTuple):
    num_pairs: int
    window: int
    horizon: int
    sigma: float
    outer_learning_rate: float
    hidden_sizes: tuple[int, ...]
    steps_per_round: int
    rounds: int


SETTINGS = {
    "reference": Setting(32, 10, 200, 0.01, 3e-4, (32, 32), 10, 5),
    "quick": Setting(2, 5, 20, 0.01, 3e-4, (8,), 2, 1),
    "accelerator": Setting(2048, 10, 200, 0.01, 3e-4, (32, 32), 10, 5),
    # Only steps_per_round and rounds are read: the rest is the shipped version's recorded config.
    "pretrained": Setting(8, 20, 500, 0.01, 1e-3, (8, 8), 3, 5),
}


def _block(tree: Any) -> Any:
    return jax.block_until_ready(tree)


def _rss_peak_mb() -> float:
    """Peak resident memory of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _device_peak_mb() -> float | None:
    stats = jax.local_devices()[0].memory_stats() or {}
    peak = stats.get("peak_bytes_in_use")
    return None if peak is None else peak / 2**20


class Variant:
    """One way of running the 2N inner trainings: ``setup()`` compiles, ``run(n)`` times n steps."""

    name: str
    inner_steps_per_call: int
    compile_seconds: float = 0.0
    extra: dict[str, float]

    def run(self, num_calls: int) -> float:
        """Seconds for ``num_calls`` outer steps (dispatch and completion)."""
        start = time.perf_counter()
        for _ in range(num_calls):
            self.step()
        _block(self.state)
        return time.perf_counter() - start


class EngineVariant(Variant):
    """The meta-trainer's outer step on a mesh of ``num_devices``."""

    def __init__(
        self, setting: Setting, family, optimizer, num_devices: int, pairs_per_chunk: int | None
    ):
        config = engine.EngineConfig(
            num_pairs=setting.num_pairs,
            window=setting.window,
            sigma=setting.sigma,
            horizon=setting.horizon,
            pairs_per_chunk=pairs_per_chunk,
        )
        system = unrolled_tasks.TaskTrainingSystem(family, optimizer)
        groups = [outer.TaskGroup("digits", system, config, 1.0)]
        settings = outer.OuterSettings("adam", setting.outer_learning_rate)
        self._build(groups, settings, optimizer, num_devices, pairs_per_chunk)

    def _build(self, groups, settings, optimizer, num_devices: int, pairs_per_chunk) -> None:
        chunks = "all pairs at once" if pairs_per_chunk is None else f"chunks of {pairs_per_chunk}"
        self.name = f"engine, {chunks} ({num_devices} dev)"
        self.groups, self.settings = groups, settings
        self.mesh = outer.make_mesh(num_devices)
        self.theta = optimizer.init_meta_params(jax.random.key(0))
        self.inner_steps_per_call = outer.inner_steps_per_outer_step(self.groups)

    def setup(self) -> None:
        start = time.perf_counter()
        self.state, burn_in = outer.init_meta_state(
            self.groups, self.theta, self.settings, jax.random.key(1), self.mesh
        )
        _block(self.state)
        self.extra = {"burn_in_seconds": time.perf_counter() - start, "burn_in_steps": burn_in[0]}
        self.outer_step = outer.OuterStep(self.groups, self.settings, self.mesh)
        self.compile_seconds = self.outer_step.compile(self.state)
        self.step()
        _block(self.state)

    def step(self) -> None:
        self.state, _, _ = self.outer_step(self.state)


def _pair_keys(key: jax.Array, num_pairs: int) -> jax.Array:
    """Keys shared by the two twins of each pair: ``[2 N]``, pair j at j and N + j."""
    keys = jax.random.split(key, num_pairs)
    return jnp.concatenate([keys, keys])


class JittedVariant(Variant):
    """A variant whose outer step is ``self.jitted(state) -> state`` (buffer-donating)."""

    def setup(self) -> None:
        start = time.perf_counter()
        self.compiled = self.jitted.lower(self.state).compile()
        self.compile_seconds = time.perf_counter() - start
        self.step()
        _block(self.state)

    def step(self) -> None:
        self.state = self.compiled(self.state)


class EvosaxVariant(JittedVariant):
    """evosax NoiseReuseES around a vmapped, scanned inner loop (one device, lockstep)."""

    def __init__(self, setting: Setting, family, optimizer):
        from evosax.algorithms import NoiseReuseES

        self.name = "evosax NRES (1 dev)"
        self.extra = {}
        self.inner_steps_per_call = 2 * setting.num_pairs * setting.window
        theta = optimizer.init_meta_params(jax.random.key(0))
        es = NoiseReuseES(
            population_size=2 * setting.num_pairs,
            solution=theta,
            optimizer=optax.adam(setting.outer_learning_rate),
            std_schedule=optax.constant_schedule(setting.sigma),
        )
        params = es.default_params.replace(T=setting.horizon, K=setting.window)
        num_pairs, window = setting.num_pairs, setting.window

        def fresh_inner(theta, key):
            config_key, init_key = jax.random.split(key)
            config = family.sample(config_key)
            task_params = family.task(config).init(init_key)
            return config, task_params, optimizer.init(theta, task_params, setting.horizon)

        def unroll(theta, inner, key):
            config, task_params, opt_state = inner
            task = family.task(config)

            def body(carry, step_key):
                task_params, opt_state = carry
                loss, grads = jax.value_and_grad(task.loss)(task_params, step_key)
                updates, opt_state = optimizer.update(theta, opt_state, grads, task_params, loss)
                return (optax.apply_updates(task_params, updates), opt_state), loss

            carry, losses = jax.lax.scan(
                body, (task_params, opt_state), jax.random.split(key, window)
            )
            return (config, *carry), jnp.mean(losses)

        def outer_step(carry):
            es_state, inner, key = carry
            key, ask_key, tell_key, reset_key, data_key = jax.random.split(key, 5)
            population, es_state = es.ask(ask_key, es_state, params)
            fresh = jax.vmap(fresh_inner)(population, _pair_keys(reset_key, num_pairs))
            restart = es_state.inner_step_counter == 0
            inner = jax.tree.map(lambda f, o: jnp.where(restart, f, o), fresh, inner)
            inner, fitness = jax.vmap(unroll)(population, inner, _pair_keys(data_key, num_pairs))
            es_state, _ = es.tell(tell_key, population, fitness, es_state, params)
            return es_state, inner, key

        key = jax.random.key(2)
        es_state = es.init(key, theta, params)
        population, _ = es.ask(key, es_state, params)
        inner = jax.vmap(fresh_inner)(population, _pair_keys(key, num_pairs))
        self.state = (es_state, inner, key)
        self.jitted = jax.jit(outer_step, donate_argnums=0)


class AdamVariant(JittedVariant):
    """The same 2N inner trainings with ``optax.adam(1e-3)`` and no estimator, sharded like the
    engine."""

    def __init__(self, setting: Setting, family, num_devices: int):
        self.name = f"adam, no ES ({num_devices} dev)"
        self.extra = {}
        num_particles, window = 2 * setting.num_pairs, setting.window
        self.inner_steps_per_call = num_particles * window
        mesh = outer.make_mesh(num_devices)
        adam = optax.adam(1e-3)
        program = _unroll_program(family, adam, window, mesh, fixed_batch=False)
        self.state = _unroll_init(family, adam, num_particles, jax.random.key(3), mesh)
        self.jitted = jax.jit(program, donate_argnums=0)


class PretrainedEngineVariant(EngineVariant):
    """The engine on a shipped recipe's groups, as ``lopt meta-train`` builds them; with
    ``training_meta_loss`` the meta-loss is each step's training loss instead of the recipe's (no
    forward pass on held-out data)."""

    def __init__(
        self,
        config,
        num_devices: int,
        pairs_per_chunk: int | None,
        training_meta_loss: bool = False,
    ):
        if training_meta_loss:
            config = config.copy_and_resolve_references()
            config.meta_loss, config.meta_loss_train_weight = "train", 0.0
        settings = config_flags.validate(config)
        optimizer, groups = settings.optimizer, train.build_groups(settings)
        groups = [
            g._replace(
                engine_config=dataclasses.replace(g.engine_config, pairs_per_chunk=pairs_per_chunk)
            )
            for g in groups
        ]
        self._build(groups, settings.outer, optimizer, num_devices, pairs_per_chunk)
        if training_meta_loss:
            self.name = self.name.replace("engine,", "engine, training-loss meta-loss,")


# Inner-step ablations of the pretrained setting: the same particles (every group's 2 x pairs
# trainings, augmented as configured unless noted), K steps per call, no estimator, no resets.
UNROLLS = {
    "adamw": "plain AdamW: the ceiling",
    "rule": "the normalized rule at a fixed theta (no ES)",
    "rule, no orthogonalization": "the same rule with orthogonalize=False (run only when the "
    "recipe's rule orthogonalizes)",
    "sgd": "plain SGD: forward/backward and data sampling, an update of one multiply-add",
    "sgd, no augmentation": "plain SGD on the families without their augmentation",
    "sgd, fixed batch": "plain SGD, one key for every step (XLA hoists the batch out of the loop)",
}


class UnrollVariant(JittedVariant):
    """The pretrained groups' particles trained by ``kind`` (a key of ``UNROLLS``), vmapped,
    scanned K steps per call, sharded over a mesh of ``num_devices`` like the engine."""

    def __init__(self, config, kind: str, num_devices: int):
        self.name = f"unroll: {kind} ({num_devices} dev)"
        self.extra = {}
        window = config.estimator.window
        optimizer = config_flags.validate(config).optimizer
        if kind == "rule, no orthogonalization":
            optimizer = dataclasses.replace(optimizer, orthogonalize=False)
        theta = optimizer.init_meta_params(jax.random.key(0))
        mesh = outer.make_mesh(num_devices)
        if kind.startswith("rule"):
            # The rule's own update, as the engine calls it (lopt.to_optax adds a host callback
            # per step that warns past the horizon).
            horizon = config.estimator.horizon
            step_size = unrolled_tasks.step_size_of(optimizer, config.optimizer)
            tx = inner_training.learned_transform(optimizer, theta, step_size, horizon)
        elif kind == "adamw":
            tx = optax.adamw(1e-3)
        else:
            tx = optax.sgd(1e-3)
        programs, states = [], []
        self.inner_steps_per_call = 0
        for index, group in enumerate(config.groups.values()):
            family = registry.get_family(group.family, **group.overrides)
            if group.augmentation != "none" and kind != "sgd, no augmentation":
                family = augment.reparameterize(
                    family, group.augmentation, tuple(group.augmentation_range)
                )
            num_particles = 2 * group.num_pairs
            self.inner_steps_per_call += num_particles * window
            programs.append(_unroll_program(family, tx, window, mesh, kind == "sgd, fixed batch"))
            states.append(_unroll_init(family, tx, num_particles, jax.random.key(3 + index), mesh))
        self.state = states

        def step(states):
            return [program(state) for program, state in zip(programs, states, strict=True)]

        self.jitted = jax.jit(step, donate_argnums=0)


def _unroll_init(family, tx, num_particles: int, key: jax.Array, mesh) -> Any:
    def init(key):
        config_key, init_key = jax.random.split(key)
        config = family.sample(config_key)
        task_params = family.task(config).init(init_key)
        return config, task_params, tx.init(task_params), key

    particles = jax.vmap(init)(jax.random.split(key, num_particles))
    return jax.device_put(particles, NamedSharding(mesh, P(outer.AXIS)))


def _unroll_program(family, tx, window: int, mesh, fixed_batch: bool) -> Any:
    def unroll(particle):
        config, task_params, opt_state, key = particle
        task = family.task(config)
        key, data_key = jax.random.split(key)

        def body(carry, step_key):
            task_params, opt_state = carry
            loss, grads = jax.value_and_grad(task.loss)(
                task_params, data_key if fixed_batch else step_key
            )
            updates, opt_state = tx.update(grads, opt_state, task_params, value=loss)
            return (optax.apply_updates(task_params, updates), opt_state), None

        carry, _ = jax.lax.scan(body, (task_params, opt_state), jax.random.split(data_key, window))
        return (config, *carry, key)

    return jax.shard_map(
        jax.vmap(unroll), mesh=mesh, in_specs=P(outer.AXIS), out_specs=P(outer.AXIS)
    )


def shipped_recipe(name: str) -> ml_collections.ConfigDict:
    """The config that meta-trained the shipped optimizer ``name``, from its training record."""
    return ml_collections.ConfigDict(lopt.pretrained_info(name)["config"])


def pretrained_variants(
    config: ml_collections.ConfigDict, device_counts: list[int], chunks: list[int | None]
) -> list[Variant]:
    """The engine on a shipped recipe's ``config`` (its chunking first, as ``lopt meta-train``
    runs it, then ``chunks``) and the unroll ablations, on each mesh size."""
    default_chunk = config_flags.pairs_per_chunk(config, jax.default_backend())
    orthogonalizes = config.optimizer.hyperparameters.get("orthogonalize", False)
    chunks = [default_chunk, *(c for c in chunks if c != default_chunk)]
    variants: list[Variant] = []
    for n in device_counts:
        variants += [PretrainedEngineVariant(config, n, chunk) for chunk in chunks]
        if config.meta_loss != "train":
            variants.append(PretrainedEngineVariant(config, n, default_chunk, True))
        variants += [
            UnrollVariant(config, kind, n)
            for kind in UNROLLS
            if kind != "rule, no orthogonalization" or orthogonalizes
        ]
    return variants


def breakdown(medians: dict[str, float], devices: int) -> dict[str, float]:
    """Microseconds per inner particle-step of the parts of a step on ``devices``, from the
    medians of the ablated variants (differences of timings, so noisy where they are small). The
    unrolls vectorise all particles, so the ES overhead is taken against the engine with all
    pairs at once (when it ran); the engine as ``lopt meta-train`` runs it is listed apart."""
    per = {name: 1e6 / rate for name, rate in medians.items() if name.endswith(f"({devices} dev)")}

    def get(prefix: str) -> float | None:
        return next((s for name, s in per.items() if name.startswith(prefix)), None)

    sgd, rule = get("unroll: sgd ("), get("unroll: rule (")
    rule_plain = get("unroll: rule, no orthogonalization (")
    engine = next(s for n, s in per.items() if n.startswith("engine"))
    training_meta_loss = get("engine, training-loss meta-loss")
    parts = {
        "engine_as_meta_train_runs_it": engine,
        "of_which_held_out_meta_loss": None
        if training_meta_loss is None
        else engine - training_meta_loss,
        "engine_all_pairs_at_once": get("engine, all pairs at once"),
        "adamw_ceiling": get("unroll: adamw ("),
        "forward_backward_and_data": sgd,
        "of_which_data_sampling": sgd - get("unroll: sgd, fixed batch ("),
        "of_which_augmentation": sgd - get("unroll: sgd, no augmentation ("),
        "rule_update_vectorised": rule - sgd,
        "of_which_orthogonalization": None if rule_plain is None else rule - rule_plain,
        "adamw_update": get("unroll: adamw (") - sgd,
    }
    if parts["engine_all_pairs_at_once"] is not None:
        parts["es_overhead_vectorised"] = parts["engine_all_pairs_at_once"] - rule
    return {name: value for name, value in parts.items() if value is not None}


def _evosax_version() -> str | None:
    try:
        return importlib.metadata.version("evosax")
    except importlib.metadata.PackageNotFoundError:
        return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="tiny setting, about a minute")
    mode.add_argument("--accelerator", action="store_true", help="2048 pairs (4096 trainings)")
    mode.add_argument(
        "--pretrained",
        nargs="?",
        const=shipped.DEFAULT_PRETRAINED,
        metavar="NAME",
        help="the recipe of a shipped optimizer (default: the default one, "
        f"{shipped.DEFAULT_PRETRAINED}) against plain AdamW on its trainings, with a breakdown",
    )
    parser.add_argument("--devices", default="1,2", help="mesh sizes to run (default: 1,2)")
    parser.add_argument("--no-evosax", action="store_true", help="skip the evosax baseline")
    parser.add_argument(
        "--pairs-per-chunk",
        default="all,1",
        type=lambda text: [None if c == "all" else int(c) for c in text.split(",")],
        help="engine variants to run: pairs vectorised together ('all' or an int; default all,1; "
        "--pretrained runs its config's chunking first)",
    )
    output.add_arguments(parser)
    args = parser.parse_args(argv)
    # Taken before anything compiles: the load average is the machine's, not this run's.
    run_provenance = provenance(["benchmarks/meta_train_throughput.py", *(argv or sys.argv[1:])])
    mode_name = next(
        (m for m in ("quick", "accelerator", "pretrained") if getattr(args, m)), "reference"
    )
    setting = SETTINGS[mode_name]
    device_counts = [int(n) for n in args.devices.split(",") if int(n) <= jax.device_count()]
    suffix = "" if mode_name == "reference" else f"_{mode_name}"
    path = output.resolve(args, f"meta_train_throughput{suffix}.json")

    if mode_name == "pretrained":
        try:
            recipe = shipped_recipe(args.pretrained)
        except lopt.NotAnExportError as error:
            parser.error(str(error))
        variants = pretrained_variants(recipe, device_counts, args.pairs_per_chunk)
        groups = ", ".join(
            f"{name} ({group.family}, {group.num_pairs} pairs, {group.augmentation})"
            for name, group in recipe.groups.items()
        )
        print(
            f"pretrained: the recipe of {args.pretrained}: {recipe.optimizer.architecture} rule "
            f"{dict(recipe.optimizer.hyperparameters)}, K={recipe.estimator.window}, horizons "
            f"[{recipe.estimator.min_horizon}, {recipe.estimator.horizon}]; groups {groups}; "
            f"{jax.device_count()} {jax.devices()[0].platform} device(s)"
        )
    else:
        family = registry.get_family("mlp_digits")
        optimizer = lopt.get_optimizer("mlp", hidden_sizes=setting.hidden_sizes)
        variants = [
            EngineVariant(setting, family, optimizer, n, chunk)
            for chunk in args.pairs_per_chunk
            for n in device_counts
        ]
        variants += [AdamVariant(setting, family, n) for n in device_counts]
        if not args.no_evosax:
            try:
                variants.append(EvosaxVariant(setting, family, optimizer))
            except ImportError:
                print("evosax is not installed (pip install evosax): skipping its baseline")
        print(
            f"{mode_name}: {setting.num_pairs} pairs ({2 * setting.num_pairs} inner trainings), "
            f"K={setting.window}, T={setting.horizon}, sigma={setting.sigma}, MLP optimizer "
            f"{setting.hidden_sizes}; {jax.device_count()} {jax.devices()[0].platform} device(s)"
        )
    memory = {}
    for variant in variants:
        variant.setup()
        memory[variant.name] = {"rss_peak_mb": _rss_peak_mb(), "device_peak_mb": _device_peak_mb()}
        print(f"  compiled {variant.name} in {variant.compile_seconds:.1f}s {variant.extra or ''}")

    throughputs = {variant.name: [] for variant in variants}
    load_per_round = []  # the 1-minute load average after each round: how busy the machine was
    for _ in range(setting.rounds):
        for variant in variants:
            seconds = variant.run(setting.steps_per_round)
            rate = variant.inner_steps_per_call * setting.steps_per_round / seconds
            throughputs[variant.name].append(rate)
        load_per_round.append(os.getloadavg()[0])

    results = {}
    medians = {name: statistics.median(rates) for name, rates in throughputs.items()}
    evosax_rate = next((rate for name, rate in medians.items() if "evosax" in name), None)
    header = f"{'variant':<36}{'compile s':>10}{'particle-steps/s':>18}"
    print(f"\n{header}{'vs evosax':>11}{'vs adam':>9}")
    for variant in variants:
        rate = medians[variant.name]
        devices = variant.name.split("(")[-1]
        adam_rate = next(
            (
                r
                for name, r in medians.items()
                if name.startswith(("adam", "unroll: adamw")) and devices in name
            ),
            None,
        )
        results[variant.name] = {
            "compile_seconds": variant.compile_seconds,
            "particle_steps_per_s": rate,
            "per_round": throughputs[variant.name],
            **memory[variant.name],
            **variant.extra,
        }
        ratio_es = f"{rate / evosax_rate:.2f}x" if evosax_rate else "-"
        ratio_adam = f"{rate / adam_rate:.2f}x" if adam_rate else "-"
        print(
            f"{variant.name:<36}{variant.compile_seconds:>10.1f}{rate:>18.0f}"
            f"{ratio_es:>11}{ratio_adam:>9}"
        )
    print(f"peak RSS {_rss_peak_mb():.0f} MB; device peak {_device_peak_mb() or 'n/a'} MB")
    loads = ", ".join(f"{x:.1f}" for x in load_per_round)
    print(f"1-minute load average after each round: {loads}")

    record = {
        "provenance": run_provenance | {"evosax_version": _evosax_version()},
        "mode": mode_name,
        # The pretrained mode reads only the timing counts; its recipe is the shipped version's.
        "setting": (
            {
                "recipe": args.pretrained,
                "steps_per_round": setting.steps_per_round,
                "rounds": setting.rounds,
            }
            if mode_name == "pretrained"
            else setting._asdict()
        ),
        "steps_timed": setting.steps_per_round * setting.rounds,
        "load_average_per_round": load_per_round,
        "results": results,
    }
    if mode_name == "pretrained":
        record["breakdown_us_per_particle_step"] = {
            f"{n} dev": breakdown(medians, n) for n in device_counts
        }
        record["breakdown_method"] = (
            "differences of medians of ablated jitted variants timed in the same rounds: "
            + "; ".join(f"unroll: {k} = {v}" for k, v in UNROLLS.items())
            + "; es_overhead = engine - unroll: rule (perturbations, antithetic twins, resets, "
            "meta-loss, outer update, host dispatch); of_which_held_out_meta_loss = engine - "
            "engine, training-loss meta-loss (the same engine with each step's training loss as "
            "its meta-loss: no forward pass on held-out data)"
        )
        for devices, parts in record["breakdown_us_per_particle_step"].items():
            print(f"breakdown, microseconds per particle-step ({devices}):")
            for part, us in parts.items():
                print(f"  {part:<32}{us:>8.1f}")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(record, f, indent=2, default=float)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
