"""Cost of a learned optimizer in a real training step, against Adam and against its bare network.

Times, in one run and interleaved round by round (so machine load hits every variant alike):

* a whole jitted train step (forward, backward, update, apply; buffers donated) of an MLP
  classifier with about 1M parameters on a batch of 128, with ``optax.adam``, with the default
  shipped optimizer as users load it (``lopt.pretrained()``: ``default``), and with the exported
  (``lopt.to_optax``) normalized rule (the shipped architecture), the same with orthogonalized
  matrix directions (``orthogonalize=True``: five Newton–Schulz iterations per matrix, matmuls of
  the matrix's size), MLP, small-MLP, Adam-base MLP and LSTM optimizers;
* the optimizer update alone (``tx.update``) of each learned optimizer;
* the bare forward pass of each per-parameter network over a ready ``[num_params, num_features]``
  matrix, to one number per parameter (``bare_pass``): the arithmetic an update cannot avoid.

Prints a table with the ratios to Adam's step and of each update to its bare pass, and writes a
JSON (``benchmarks/results/optimizer_step.json`` with ``--record``, else a scratch folder; see
``benchmarks/output.py``). Compile times are reported apart. The JSON's provenance carries the load
average when the run started and ``load_average_after`` when it ended: on a shared machine compare
the ratios, which are measured within one run, not the milliseconds.

    python -m benchmarks.optimizer_step --record   # ~1M-parameter model
    python -m benchmarks.optimizer_step --quick    # ~50k parameters, a few seconds
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

import lopt
from benchmarks import output
from benchmarks.provenance import provenance

BATCH_SIZE = 128
NUM_CLASSES = 10
FULL_MODEL = (784, (1024, 256))
QUICK_MODEL = (64, (256, 128))


def init_mlp(key: jax.Array, input_dim: int, hidden: tuple[int, ...]) -> list[dict]:
    """Weights ``[fan_in, fan_out]`` and biases of an MLP input -> hidden... -> NUM_CLASSES."""
    widths = (input_dim, *hidden, NUM_CLASSES)
    keys = jax.random.split(key, len(widths) - 1)
    return [
        {
            "w": jax.random.normal(k, (a, b), jnp.float32) / a**0.5,
            "b": jnp.zeros((b,), jnp.float32),
        }
        for k, a, b in zip(keys, widths[:-1], widths[1:], strict=True)
    ]


def mlp_loss(params: list[dict], x: jax.Array, y: jax.Array) -> jax.Array:
    """Mean softmax cross-entropy of the ReLU MLP on ``x[B, D]`` with labels ``y[B]``."""
    for layer in params[:-1]:
        x = jax.nn.relu(x @ layer["w"] + layer["b"])
    logits = x @ params[-1]["w"] + params[-1]["b"]
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


def make_train_step(tx: optax.GradientTransformationExtraArgs) -> Callable:
    def train_step(params, opt_state, x, y):
        loss, grads = jax.value_and_grad(mlp_loss)(params, x, y)
        updates, opt_state = tx.update(grads, opt_state, params, value=loss)
        return optax.apply_updates(params, updates), opt_state, loss

    return jax.jit(train_step, donate_argnums=(0, 1))


def compile_seconds(fn: Callable, *args: Any) -> tuple[Any, float]:
    """``(compiled, seconds)``: ahead-of-time compile of ``fn`` for ``args``."""
    start = time.perf_counter()
    compiled = fn.lower(*args).compile()
    return compiled, time.perf_counter() - start


class Timer:
    """Seconds per call of a thunk, wall-clock and process CPU time (all threads), each the median
    over rounds of the mean over ``number`` calls. CPU time is the steadier of the two on a machine
    shared with other jobs."""

    def __init__(self, thunk: Callable[[], Any], number: int):
        self.thunk = thunk
        self.number = number
        self.wall: list[float] = []
        self.cpu: list[float] = []
        jax.block_until_ready(thunk())

    def measure(self) -> None:
        wall, cpu = time.perf_counter(), time.process_time()
        for _ in range(self.number):
            out = self.thunk()
        jax.block_until_ready(out)
        self.cpu.append((time.process_time() - cpu) / self.number)
        self.wall.append((time.perf_counter() - wall) / self.number)


def train_step_thunk(tx, params, x, y) -> tuple[Callable, float]:
    """A thunk running one donated train step on its own copy of the state, and compile time."""
    step = make_train_step(tx)
    compiled, seconds = compile_seconds(step, params, tx.init(params), x, y)
    carry = {"params": jax.tree.map(jnp.copy, params), "state": tx.init(params)}

    def thunk():
        carry["params"], carry["state"], loss = compiled(carry["params"], carry["state"], x, y)
        return loss

    return thunk, seconds


OPTIMIZERS = {
    "normalized": lambda: lopt.get_optimizer("normalized", mup_base_fan_in=32),
    "normalized_orthogonal": lambda: lopt.get_optimizer(
        "normalized", mup_base_fan_in=32, orthogonalize=True
    ),
    "mlp": lambda: lopt.get_optimizer("mlp"),
    "mlp_small": lambda: lopt.get_optimizer("mlp_small"),
    "mlp_adam": lambda: lopt.get_optimizer("mlp_adam"),
    "lstm": lambda: lopt.get_optimizer("lstm"),
}


def run(quick: bool, rounds: int, names: list[str]) -> dict:
    input_dim, hidden = QUICK_MODEL if quick else FULL_MODEL
    key_params, key_x, key_y, key_theta, key_features = jax.random.split(jax.random.key(0), 5)
    params = init_mlp(key_params, input_dim, hidden)
    num_params = sum(p.size for p in jax.tree.leaves(params))
    x = jax.random.normal(key_x, (BATCH_SIZE, input_dim), jnp.float32)
    y = jax.random.randint(key_y, (BATCH_SIZE,), 0, NUM_CLASSES)
    grads = jax.grad(mlp_loss)(params, x, y)
    loss = mlp_loss(params, x, y)
    num_steps = 1000

    learned = {name: OPTIMIZERS[name]() for name in names}
    transforms = {"adam": optax.adam(1e-3), "default": lopt.pretrained(num_steps=num_steps)}
    thetas = {}
    for name, optimizer in learned.items():
        thetas[name] = optimizer.init_meta_params(key_theta)
        step_size = lopt.StepSize() if isinstance(optimizer, lopt.LearnedRule) else None
        transforms[name] = lopt.to_optax(optimizer, thetas[name], num_steps, step_size)

    timers: dict[str, Timer] = {}
    compile_times: dict[str, float] = {}
    number = 5 if quick else 3
    for name, tx in transforms.items():
        thunk, compile_times[f"step/{name}"] = train_step_thunk(tx, params, x, y)
        timers[f"step/{name}"] = Timer(thunk, number)
    for name, optimizer in learned.items():
        tx = transforms[name]
        state = tx.init(params)
        update = jax.jit(lambda g, s, p, v, tx=tx: tx.update(g, s, p, value=v))
        update, compile_times[f"update/{name}"] = compile_seconds(
            update, grads, state, params, loss
        )
        timers[f"update/{name}"] = Timer(
            lambda u=update, s=state: u(grads, s, params, loss), number
        )
        if hasattr(optimizer, "apply_network"):
            features = jax.random.normal(
                key_features, (num_params, optimizer.num_features), jnp.float32
            )
            # The MLP and LSTM rules take per-step context; the normalized rule has none.
            context = (
                (jnp.zeros((len(thetas[name]["context_w"]),), jnp.float32),)
                if "context_w" in thetas[name]
                else ()
            )
            bare = jax.jit(functools.partial(bare_pass, optimizer))
            bare, compile_times[f"bare/{name}"] = compile_seconds(
                bare, thetas[name], features, *context
            )
            timers[f"bare/{name}"] = Timer(
                lambda b=bare, t=thetas[name], f=features, c=context: b(t, f, *c), number
            )
    for _ in range(rounds):
        for timer in timers.values():
            timer.measure()

    seconds = {name: statistics.median(timer.wall) for name, timer in timers.items()}
    cpu_seconds = {name: statistics.median(timer.cpu) for name, timer in timers.items()}
    return {
        "model": {"input_dim": input_dim, "hidden": list(hidden), "num_params": num_params},
        "batch_size": BATCH_SIZE,
        "rounds": rounds,
        "calls_per_round": number,
        "seconds": seconds,
        "cpu_seconds": cpu_seconds,
        "compile_seconds": compile_times,
        "ratios": ratios_of(seconds, learned),
        "cpu_ratios": ratios_of(cpu_seconds, learned),
        "machine": {
            "platform": platform.platform(),
            "device": str(jax.devices()[0]),
            "cpu_count": os.cpu_count(),
            "jax": jax.__version__,
        },
    }


def bare_pass(optimizer: Any, theta: Any, features: jax.Array, *context: jax.Array) -> jax.Array:
    """``[N]``: the rule's network over ready features and its per-parameter output (the MLP rules'
    ``direction * exp(1e-3 * magnitude)``: one number per parameter, as in an update, so a fused
    network is one loop rather than one per output column)."""
    out = optimizer.apply_network(theta, features, *context)
    return out if out.ndim == 1 else out[:, 0] * jnp.exp(1e-3 * out[:, 1])


def ratios_of(seconds: dict[str, float], learned: dict) -> dict[str, float]:
    """Each learned optimizer's step (and the default shipped one's) over Adam's, and each update
    over its bare network pass."""
    ratios = {
        f"step/{name}_over_adam": seconds[f"step/{name}"] / seconds["step/adam"]
        for name in ("default", *learned)
    }
    for name in learned:
        if f"bare/{name}" in seconds:
            ratios[f"update/{name}_over_bare"] = seconds[f"update/{name}"] / seconds[f"bare/{name}"]
    return ratios


TOY_SEEDS = (0, 1, 2)
TOY_STEPS = 200


def toy_problem(seed: int) -> tuple[dict, np.ndarray, np.ndarray]:
    """``(params, x, y)``: a 8-16-1 tanh MLP regressing ``sin(x @ w)`` on 64 points."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(64, 8)).astype(np.float32)
    y = np.sin(x @ rng.normal(size=(8, 1))).astype(np.float32)
    params = {
        "w1": (rng.normal(size=(8, 16)) / np.sqrt(8.0)).astype(np.float32),
        "b1": np.zeros((16,), np.float32),
        "w2": (rng.normal(size=(16, 1)) / 4.0).astype(np.float32),
        "b2": np.zeros((1,), np.float32),
    }
    return params, x, y


def toy_loss(params: dict, x: jax.Array, y: jax.Array) -> jax.Array:
    pred = jnp.tanh(x @ params["w1"] + params["b1"]) @ params["w2"] + params["b2"]
    return jnp.mean(jnp.square(pred - y))


def toy_comparison() -> dict:
    """Untrained optimizers against Adam (lr 1e-3) on the toy, full batch, ``TOY_STEPS`` steps:
    per optimizer, the initial and final loss of each seed and the root mean square of the
    per-parameter step over the run."""
    transforms = {"adam": optax.adam(1e-3)}
    for name in ("mlp_adam", "mlp", "mlp_small", "lstm"):
        optimizer = lopt.get_optimizer(name)
        theta = optimizer.init_meta_params(jax.random.key(0))
        transforms[name] = lopt.to_optax(optimizer, theta, TOY_STEPS)

    def train(tx, params, x, y):
        def step(carry, _):
            params, state = carry
            loss, grads = jax.value_and_grad(toy_loss)(params, x, y)
            updates, state = tx.update(grads, state, params, value=loss)
            mean_square = sum(jnp.sum(jnp.square(u)) for u in jax.tree.leaves(updates))
            return (optax.apply_updates(params, updates), state), (loss, mean_square)

        _, (losses, squares) = jax.lax.scan(step, (params, tx.init(params)), None, TOY_STEPS)
        num_params = sum(p.size for p in jax.tree.leaves(params))
        return losses[0], losses[-1], jnp.sqrt(jnp.mean(squares) / num_params)

    problems = [toy_problem(seed) for seed in TOY_SEEDS]
    params, x, y = jax.tree.map(lambda *leaves: np.stack(leaves), *problems)
    train_all = jax.jit(
        jax.vmap(lambda p, x, y: {name: train(tx, p, x, y) for name, tx in transforms.items()})
    )
    results = jax.tree.map(lambda r: np.asarray(r).tolist(), train_all(params, x, y))
    return {
        name: {"initial_loss": first, "final_loss": last, "step_rms": rms}
        for name, (first, last, rms) in results.items()
    }


def format_table(result: dict) -> str:
    model = result["model"]
    width = max(map(len, result["seconds"])) + 2
    lines = [
        f"model: MLP {model['input_dim']}-{'-'.join(map(str, model['hidden']))}-{NUM_CLASSES}, "
        f"{model['num_params']:,} params, batch {result['batch_size']}; "
        f"device {result['machine']['device']}",
        "ratio: a train step over Adam's step, an update over its bare network pass",
        f"{'measurement':<{width}}{'wall ms':>10}{'ratio':>8}{'cpu ms':>10}{'ratio':>8}"
        f"{'compile s':>11}",
    ]
    for name, wall in result["seconds"].items():
        kind, opt = name.split("/")
        key = {"step": f"step/{opt}_over_adam", "update": f"update/{opt}_over_bare"}.get(kind)
        wall_ratio = result["ratios"].get(key, float("nan"))
        cpu_ratio = result["cpu_ratios"].get(key, float("nan"))
        if name == "step/adam":
            wall_ratio = cpu_ratio = 1.0
        lines.append(
            f"{name:<{width}}{1e3 * wall:>10.2f}{wall_ratio:>8.2f}"
            f"{1e3 * result['cpu_seconds'][name]:>10.2f}{cpu_ratio:>8.2f}"
            f"{result['compile_seconds'][name]:>11.2f}"
        )
    return "\n".join(lines).replace("     nan", "        ")


def format_toy(toy: dict) -> str:
    lines = [
        f"untrained optimizers on a toy regression, {TOY_STEPS} steps, seeds {TOY_SEEDS}",
        f"{'optimizer':<12}{'initial loss':>16}{'final loss':>26}{'step rms':>26}",
    ]
    for name, row in toy.items():
        cells = [" ".join(f"{v:.4f}" for v in row["initial_loss"])]
        cells.append(" ".join(f"{v:.4f}" for v in row["final_loss"]))
        cells.append(" ".join(f"{v:.1e}" for v in row["step_rms"]))
        lines.append(f"{name:<12}{cells[0]:>22}{cells[1]:>22}{cells[2]:>26}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a ~50k-parameter model")
    parser.add_argument("--rounds", type=int, default=None, help="timing rounds (default 20 / 7)")
    parser.add_argument(
        "--optimizers",
        default=",".join(OPTIMIZERS),
        type=lambda text: text.split(","),
        help=f"learned optimizers to time against Adam (default: all of {', '.join(OPTIMIZERS)})",
    )
    parser.add_argument("--no-toy", action="store_true", help="skip the toy comparison")
    output.add_arguments(parser)
    args = parser.parse_args(argv)
    unknown = sorted(set(args.optimizers) - set(OPTIMIZERS))
    if unknown:
        parser.error(f"unknown --optimizers {unknown}; choose from {list(OPTIMIZERS)}")
    out = output.resolve(args, "optimizer_step.json")
    rounds = args.rounds or (20 if args.quick else 7)
    if rounds < 1:
        parser.error(f"--rounds must be >= 1, got {rounds}")
    result = {"provenance": provenance(argv), **run(args.quick, rounds, args.optimizers)}
    print(format_table(result))
    result["load_average_after"] = list(os.getloadavg())
    if not args.no_toy:
        result["toy"] = toy_comparison()
        print(format_toy(result["toy"]))
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w") as f:
        json.dump(result, f, indent=2)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
