"""Influence balancing (PES paper Fig. 4, ES-Single paper Fig. 5).

A 23-dimensional linear system driven by one scalar theta; the long-run loss is minimised at
theta* = -1/6, but a truncated gradient sees only the short-term effect and pushes theta up.
Particles never reset (a horizon longer than the run, lockstep). Outer SGD at lr 1e-4 from
theta = 0.5, sigma = 0.1, K = 1. Expected: TES and TBPTT(K=1) move away from theta*; PES needs
many particles and is unstable with few; ES-Single converges with N = 4.

    python -m benchmarks.paper.influence_balancing [--quick] [--out DIR | --record]
"""

from __future__ import annotations

import sys
import time

import jax
import numpy as np
import optax

from benchmarks.paper import common
from meta_train import unrolled_tasks
from meta_train.es import engine
from meta_train.es.compile_options import FAST_COMPILE

NAME = "influence_balancing"
# (label, estimator, num_pairs)
FULL_RUNS = (
    ("TBPTT K=1", "tbptt", 1),
    ("TES N=100", "tes", 100),
    ("PES N=4", "pes", 4),
    ("PES N=100", "pes", 100),
    ("PES N=1000", "pes", 1000),
    ("ES-Single N=4", "es_single", 4),
    ("ES-Single N=100", "es_single", 100),
)
QUICK_RUNS = (("PES N=4", "pes", 4), ("ES-Single N=4", "es_single", 4))
ESTIMATORS = ("tbptt", "tes", "pes", "es_single")


def run(
    estimator: str,
    num_pairs: int,
    num_steps: int,
    num_seeds: int,
    lr: float,
    sigma: float,
    compiler_options: dict | None = None,
) -> common.OuterRun:
    """Meta-train theta from 0.5 with seeds ``0..num_seeds-1``; ``theta`` is ``[S, steps+1, 1]``."""
    system = unrolled_tasks.InfluenceBalancingSystem()
    config = engine.EngineConfig(
        num_pairs=num_pairs,
        window=1,
        sigma=sigma,
        horizon=num_steps + 2,  # never reached: the inner problem is infinite
        stagger=False,
        estimator=estimator,
    )
    return common.run_outer(
        system,
        config,
        system.init_theta(),
        optax.sgd(lr),
        num_steps,
        jax.random.split(jax.random.key(0), num_seeds),
        chunk=min(num_steps, 1000),
        compiler_options=compiler_options,
    )


def main(argv: list[str] | None = None) -> int:
    parse = common.parser(__doc__.splitlines()[0])
    parse.add_argument("--steps", type=int, default=3000, help="outer steps")
    parse.add_argument("--seeds", type=int, default=5)
    parse.add_argument("--lr", type=float, default=1e-4, help="outer SGD learning rate")
    parse.add_argument("--sigma", type=float, default=0.1)
    common.add_estimators_argument(parse, ESTIMATORS)
    args = common.parse_args(parse, argv)
    runs, num_steps, num_seeds = FULL_RUNS, args.steps, args.seeds
    if args.quick:
        runs, num_steps, num_seeds = QUICK_RUNS, 20, 2
    chosen = common.selected(args, ESTIMATORS)
    runs = tuple(run for run in runs if run[1] in chosen)
    options = FAST_COMPILE if args.quick else None
    optimum = unrolled_tasks.InfluenceBalancingSystem().dynamics.optimum()
    print(f"influence balancing: theta* = {optimum:.4f}, theta_0 = 0.5, {num_steps} outer steps")
    results = {}
    for label, estimator, num_pairs in runs:
        start = time.perf_counter()
        thetas = run(
            estimator, num_pairs, num_steps, num_seeds, args.lr, args.sigma, options
        ).theta[..., 0]
        final = thetas[:, -1]
        thinned, every = common.thin(thetas)
        results[label] = {
            "estimator": estimator,
            "num_pairs": num_pairs,
            "theta_every": every,
            "theta": thinned,
            "final_theta": final,
            "median_final_theta": float(np.median(final)),
            "median_abs_error": float(np.median(np.abs(final - optimum))),
            "seconds": time.perf_counter() - start,
        }
        print(
            f"  {label:16s} final theta per seed {np.array2string(final, precision=3)}; "
            f"median {np.median(final):+.4f} (|error| {np.median(np.abs(final - optimum)):.4f})"
        )
    payload = {
        "experiment": NAME,
        "optimum": optimum,
        "theta_0": 0.5,
        "num_steps": num_steps,
        "num_seeds": num_seeds,
        "outer_lr": args.lr,
        "sigma": args.sigma,
        "window": 1,
        "quick": args.quick,
        "runs": results,
    }
    path = common.write_json(args.out, NAME, payload, ("runs",), args.estimators is not None)
    print("wrote", path)
    fig, (axis,) = common.figure(1, width=6.5, height=4.5)
    for label, result in common.read_json(path)["runs"].items():
        median, low, high = common.median_band(np.asarray(result["theta"]))
        steps = np.arange(len(median)) * result["theta_every"]
        (line,) = axis.plot(steps, median, label=label)
        axis.fill_between(steps, low, high, color=line.get_color(), alpha=0.2)
    axis.axhline(optimum, color="k", linestyle="--", label="theta* = -1/6")
    axis.set(xlabel="outer step", ylabel="theta (median, IQR over seeds)")
    axis.set_ylim(-1.0, 1.5)
    axis.legend(fontsize=7)
    print("wrote", common.save_figure(fig, args.out, NAME))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
