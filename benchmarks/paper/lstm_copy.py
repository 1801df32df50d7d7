"""LSTM copy task with a curriculum on the sequence length (ES-Single paper Sec. 5.4).

theta are the weights of a small LSTM trained online by the estimators themselves (no
backpropagation): an inner problem is one sequence, ``L`` random binary symbols, a delimiter, then
``L`` blanks during which the LSTM must output the symbols in order (horizon ``T = 2 L + 1``). The
per-step loss is the cross-entropy of the output on the recall steps (0 on the others). K = 1 for
every estimator (one outer step per time step), N pairs, staggered. Curriculum: every ``check``
outer steps the current theta is scored on fresh sequences; at a recall accuracy of 95% or more
``L`` grows by one (new particles, a new compile). Expected: ES-Single >= PES > TES in the length
reached.

    python -m benchmarks.paper.lstm_copy [--quick] [--out DIR | --record]
"""

from __future__ import annotations

import sys
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct
from jax.flatten_util import ravel_pytree

from benchmarks.paper import common
from lopt.lstm import lstm_cell
from meta_train.es import engine
from meta_train.es.compile_options import FAST_COMPILE
from meta_train.es.system import UnrolledSystem

NAME = "lstm_copy"
NUM_SYMBOLS = 2
DELIMITER, BLANK = NUM_SYMBOLS, NUM_SYMBOLS + 1
NUM_INPUTS = NUM_SYMBOLS + 2
ACCURACY_TO_ADVANCE = 0.95
LABELS = {"tes": "TES", "pes": "PES", "es_single": "ES-Single"}


def init_lstm(key: jax.Array, hidden: int) -> dict[str, jax.Array]:
    """LSTM weights ``w [inputs + hidden, 4 hidden]``, ``b [4 hidden]`` (forget bias 1) and a
    readout ``out_w [hidden, symbols]``, ``out_b [symbols]``."""
    cell_key, out_key = jax.random.split(key)
    fan_in = NUM_INPUTS + hidden
    bias = jnp.zeros(4 * hidden).at[hidden : 2 * hidden].set(1.0)
    return {
        "w": jax.random.normal(cell_key, (fan_in, 4 * hidden)) / np.sqrt(fan_in),
        "b": bias,
        "out_w": jax.random.normal(out_key, (hidden, NUM_SYMBOLS)) / np.sqrt(hidden),
        "out_b": jnp.zeros(NUM_SYMBOLS),
    }


class CopyState(struct.PyTreeNode):
    """``h``, ``c``: ``[hidden]`` LSTM state; ``t``: ``[]`` int32 position in the sequence."""

    h: jax.Array
    c: jax.Array
    t: jax.Array


class CopySystem(struct.PyTreeNode, UnrolledSystem):
    """The copy task of length ``length`` as an unrolled system (config: the ``[L]`` symbols)."""

    length: int = struct.field(pytree_node=False)
    hidden: int = struct.field(pytree_node=False)

    @property
    def horizon(self) -> int:
        return 2 * self.length + 1

    def sample_config(self, key: jax.Array) -> jax.Array:
        return jax.random.randint(key, (self.length,), 0, NUM_SYMBOLS)

    def init_state(self, theta: Any, key: jax.Array, config: jax.Array, horizon) -> CopyState:
        zeros = jnp.zeros(self.hidden, jnp.float32)
        return CopyState(zeros, zeros, jnp.zeros((), jnp.int32))

    def _io(self, config: jax.Array, t: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        """``(input token, target symbol, is_recall_step)`` at position ``t``."""
        token = jnp.where(t < self.length, config[jnp.minimum(t, self.length - 1)], BLANK)
        token = jnp.where(t == self.length, DELIMITER, token)
        recall = t > self.length
        target = config[jnp.clip(t - self.length - 1, 0, self.length - 1)]
        return token, target, recall

    def logits(self, theta: Any, state: CopyState, token: jax.Array) -> tuple[CopyState, jax.Array]:
        inputs = jnp.concatenate([jax.nn.one_hot(token, NUM_INPUTS), state.h])
        h, c = lstm_cell(inputs @ theta["w"] + theta["b"], state.c)
        return CopyState(h, c, state.t + 1), h @ theta["out_w"] + theta["out_b"]

    def step(
        self, theta: Any, state: CopyState, key: jax.Array, config: jax.Array
    ) -> tuple[CopyState, jax.Array]:
        token, target, recall = self._io(config, state.t)
        state, logits = self.logits(theta, state, token)
        loss = -jax.nn.log_softmax(logits)[target]
        return state, jnp.where(recall, loss, 0.0).astype(jnp.float32)

    def accuracy(self, theta: Any, key: jax.Array, num_sequences: int) -> jax.Array:
        """Fraction of recall steps answered correctly on ``num_sequences`` fresh sequences."""

        def one(key):
            config = self.sample_config(key)

            def body(state, _):
                token, target, recall = self._io(config, state.t)
                state, logits = self.logits(theta, state, token)
                return state, jnp.where(recall, jnp.argmax(logits) == target, False)

            state = self.init_state(theta, key, config, self.horizon)
            _, correct = jax.lax.scan(body, state, None, length=self.horizon)
            return jnp.sum(correct) / self.length

        return jnp.mean(jax.vmap(one)(jax.random.split(key, num_sequences)))


def train_with_curriculum(
    estimator: str,
    num_steps: int,
    num_pairs: int,
    hidden: int,
    sigma: float,
    outer_lr: float,
    check: int,
    seed: int,
    compiler_options: dict | None = None,
) -> dict[str, Any]:
    """Meta-train the LSTM for ``num_steps`` outer steps, growing ``L`` from 1; returns the length
    reached (the longest ``L`` passed), and per-check ``steps``, ``length``, ``accuracy``."""
    key = jax.random.key(seed)
    theta = init_lstm(jax.random.fold_in(key, 0), hidden)
    outer_optimizer = optax.adam(outer_lr)
    outer_state = outer_optimizer.init(theta)
    length, done = 1, 0
    history = {"steps": [], "length": [], "accuracy": [], "meta_loss": []}
    while done < num_steps:
        system = CopySystem(length=length, hidden=hidden)
        config = engine.EngineConfig(
            num_pairs=num_pairs,
            window=1,
            sigma=sigma,
            horizon=system.horizon,
            stagger=True,
            estimator=estimator,
        )
        particles, _ = engine.init_particles(
            system, config, theta, jax.random.fold_in(key, 1 + length)
        )
        add_seed_axis = lambda tree: jax.tree.map(lambda x: x[None], tree)
        carry = add_seed_axis((theta, outer_state, particles))
        run_chunk = common.chunk_runner(system, config, outer_optimizer, check, compiler_options)
        accuracy_of = jax.jit(system.accuracy, static_argnums=2, compiler_options=compiler_options)
        while done < num_steps:
            carry, (_, meta_loss, _) = run_chunk(carry)
            done += check
            theta = jax.tree.map(lambda x: x[0], carry[0])
            accuracy = float(accuracy_of(theta, jax.random.fold_in(key, 10_000 + done), 256))
            history["steps"].append(done)
            history["length"].append(length)
            history["accuracy"].append(accuracy)
            history["meta_loss"].append(float(np.nanmean(meta_loss)))
            if accuracy >= ACCURACY_TO_ADVANCE:
                outer_state = jax.tree.map(lambda x: x[0], carry[1])
                length += 1
                break
    passed = [
        n
        for n, a in zip(history["length"], history["accuracy"], strict=True)
        if a >= ACCURACY_TO_ADVANCE
    ]
    return {"length_reached": max(passed, default=0), **history}


def main(argv: list[str] | None = None) -> int:
    parse = common.parser(__doc__.splitlines()[0])
    parse.add_argument("--steps", type=int, default=30000, help="outer steps (= time steps)")
    parse.add_argument("--hidden", type=int, default=8)
    parse.add_argument("--check", type=int, default=200, help="outer steps between checks")
    common.add_scale_arguments(parse, pairs=32, seeds=3, sigma=0.1, outer_lr=0.01)
    common.add_estimators_argument(parse, tuple(LABELS))
    args = common.parse_args(parse, argv)
    steps, pairs, check, num_seeds = args.steps, args.pairs, args.check, args.seeds
    estimators = common.selected(args, tuple(LABELS))
    if args.quick:
        steps, pairs, check, num_seeds, estimators = 20, 2, 10, 1, ("es_single",)
    num_theta = ravel_pytree(init_lstm(jax.random.key(0), args.hidden))[0].size
    print(f"LSTM copy: P = {num_theta}, N = {pairs}, K = 1, {steps} outer steps, {num_seeds} seeds")
    results = {}
    for estimator in estimators:
        start = time.perf_counter()
        runs = [
            train_with_curriculum(
                estimator,
                steps,
                pairs,
                args.hidden,
                args.sigma,
                args.outer_lr,
                check,
                seed,
                FAST_COMPILE if args.quick else None,
            )
            for seed in range(num_seeds)
        ]
        reached = [run["length_reached"] for run in runs]
        results[LABELS[estimator]] = {
            "estimator": estimator,
            "length_reached": reached,
            "runs": runs,
            "seconds": time.perf_counter() - start,
        }
        print(f"  {LABELS[estimator]:10s} length reached per seed: {reached}")
    payload = {
        "experiment": NAME,
        "num_theta": num_theta,
        "num_symbols": NUM_SYMBOLS,
        "hidden": args.hidden,
        "num_pairs": pairs,
        "window": 1,
        "sigma": args.sigma,
        "outer": f"adam({args.outer_lr})",
        "outer_steps": steps,
        "accuracy_to_advance": ACCURACY_TO_ADVANCE,
        "quick": args.quick,
        "results": results,
    }
    path = common.write_json(args.out, NAME, payload, ("results",), args.estimators is not None)
    print("wrote", path)
    fig, (lengths, accuracy) = common.figure(2)
    for label, result in common.read_json(path)["results"].items():
        color = None
        for index, run in enumerate(result["runs"]):
            (line,) = lengths.step(
                run["steps"],
                run["length"],
                where="post",
                color=color,
                label=label if index == 0 else None,
            )
            color = line.get_color()
            accuracy.plot(run["steps"], run["accuracy"], color=color, alpha=0.7)
    lengths.set(xlabel="outer step (= time step)", ylabel="curriculum length L")
    lengths.legend()
    accuracy.set(xlabel="outer step", ylabel="recall accuracy at the current L")
    print("wrote", common.save_figure(fig, args.out, NAME))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
