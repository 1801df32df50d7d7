"""Learned-optimizer meta-training: ES-Single vs PES vs TES at an equal inner-step budget
(ES-Single paper Fig. 8).

The per-parameter MLP optimizer (``lopt.MLPOptimizer``, Adam base step plus a learned correction,
the package default) is meta-trained on the digits MLP family with each estimator, same N, K, T
(staggered), sigma, outer optimizer and number of outer steps (so the same inner-step budget), for
several seeds (``vmap``ped). We plot the meta-loss curves and evaluate every result on a held-out
task (the digits MLP with tanh units, never sampled in meta-training) against Adam tuned over a
learning-rate grid (``meta_train.evaluation.evaluate``).

    python -m benchmarks.paper.learned_optimizer [--quick] [--out DIR | --record]
"""

from __future__ import annotations

import sys
import time

import jax
import numpy as np
import optax
from jax.flatten_util import ravel_pytree

import lopt
from benchmarks.paper import common
from meta_train import unrolled_tasks
from meta_train.es import engine
from meta_train.es.compile_options import FAST_COMPILE
from meta_train.evaluation import evaluate
from meta_train.evaluation.report import smooth
from tasks import registry

NAME = "learned_optimizer"
ESTIMATORS = (("es_single", "ES-Single"), ("pes", "PES"), ("tes", "TES"))
HELD_OUT_TASK = "mlp_digits_tanh"


def main(argv: list[str] | None = None) -> int:
    parse = common.parser(__doc__.splitlines()[0])
    parse.add_argument("--horizon", type=int, default=1000, help="T")
    parse.add_argument("--window", type=int, default=10, help="K")
    parse.add_argument("--outer-steps", type=int, default=1000)
    common.add_scale_arguments(parse, pairs=4, seeds=3, sigma=0.01, outer_lr=3e-3)
    parse.add_argument("--eval-seeds", type=int, default=3)
    common.add_estimators_argument(parse, tuple(e for e, _ in ESTIMATORS))
    args = common.parse_args(parse, argv)
    partial = args.estimators is not None
    horizon, window, pairs, outer_steps, seeds = (
        args.horizon,
        args.window,
        args.pairs,
        args.outer_steps,
        args.seeds,
    )
    chosen = common.selected(args, tuple(e for e, _ in ESTIMATORS))
    estimators = tuple((e, label) for e, label in ESTIMATORS if e in chosen)
    family = registry.get_family("mlp_digits")
    held_out = [t for t in registry.get_suite("default") if t.name == HELD_OUT_TASK]
    eval_steps, eval_seeds, adam_grid = horizon, args.eval_seeds, evaluate.ADAM_GRID
    if args.quick:
        horizon, window, pairs, outer_steps, seeds = 4, 2, 1, 2, 1
        estimators = ESTIMATORS[:1]
        family = registry.get_family("mlp_digits", hidden=(8,), batch_size=32)
        held_out = {"tiny_digits": family.task(family.default_config())}
        eval_steps, eval_seeds, adam_grid = 4, 1, (1e-3,)
    options = FAST_COMPILE if args.quick else None
    optimizer = lopt.get_optimizer("mlp", base="adam")
    system = unrolled_tasks.TaskTrainingSystem(family, optimizer, meta_loss="train")
    theta0 = optimizer.init_meta_params(jax.random.key(0))
    num_theta = ravel_pytree(theta0)[0].size
    outer_optimizer = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(args.outer_lr))
    budget = outer_steps * window * 2 * pairs
    print(
        f"learned optimizer: P = {num_theta}, T = {horizon}, K = {window}, N = {pairs}, "
        f"{outer_steps} outer steps = {budget} inner steps per seed and estimator, {seeds} seeds"
    )

    results = {}
    for estimator, label in estimators:
        config = engine.EngineConfig(
            num_pairs=pairs,
            window=window,
            sigma=args.sigma,
            horizon=horizon,
            stagger=True,
            estimator=estimator,
        )
        start = time.perf_counter()
        run = common.run_outer(
            system,
            config,
            theta0,
            outer_optimizer,
            outer_steps,
            jax.random.split(jax.random.key(11), seeds),
            chunk=min(outer_steps, 50),
            compiler_options=options,
        )
        results[label] = {"run": run, "seconds_total": time.perf_counter() - start}
        tail = run.meta_loss[:, -max(1, outer_steps // 10) :]
        print(
            f"  {label:10s} meta-loss over the last 10% of outer steps, per seed: "
            f"{np.array2string(np.nanmean(tail, axis=1), precision=4)} "
            f"(first 10%: {np.nanmean(run.meta_loss[:, : max(1, outer_steps // 10)]):.4f}); "
            f"{run.seconds:.0f} s after compile"
        )

    # Held-out evaluation: each final theta, the untrained theta, and Adam tuned over a grid.
    evaluations = {}
    _, unravel = ravel_pytree(theta0)
    # The untrained optimizer is the floor; --quick skips it (one compile fewer).
    # A rerun of some estimators keeps the baselines from the JSON it merges into; a rerun of all
    # of them (by name) re-evaluates the baselines too.
    with_baselines = args.quick or len(chosen) == len(ESTIMATORS)
    candidates = {"untrained": [theta0]} if with_baselines and not args.quick else {}
    for label, result in results.items():
        candidates[label] = [unravel(t) for t in result["run"].theta[:, -1]]
    for label, thetas in candidates.items():
        per_seed = []
        for theta in thetas:
            report = evaluate.evaluate(
                optimizer,
                held_out,
                theta=theta,
                num_steps=eval_steps,
                seeds=eval_seeds,
                baselines=("adam",) if not evaluations and with_baselines else (),
                adam_grid=adam_grid,
                untrained_floor=False,
                progress=False,
                name=label,
                compiler_options=options,
            )
            per_seed.append(report.to_dict())
        evaluations[label] = per_seed
    summary = held_out_summary(evaluations)
    for label, figures in summary.items():
        print(f"  held-out {label:10s} final train loss {figures}")

    payload = {
        "experiment": NAME,
        "num_theta": num_theta,
        "horizon": horizon,
        "window": window,
        "num_pairs": pairs,
        "outer_steps": outer_steps,
        "sigma": args.sigma,
        "outer": f"clip(1.0) + adam({args.outer_lr})",
        "inner_steps_per_seed": budget,
        "seeds": seeds,
        "held_out_task": HELD_OUT_TASK if not args.quick else "tiny_digits",
        "held_out_steps": eval_steps,
        "quick": args.quick,
        "meta_training": {
            label: {
                "meta_loss": r["run"].meta_loss,
                "burn_in_steps": r["run"].burn_in,
                "seconds_after_compile": r["run"].seconds,
                "seconds_total": r["seconds_total"],
            }
            for label, r in results.items()
        },
        "held_out_summary": summary,
        "held_out_reports": evaluations,
    }
    sections = ("meta_training", "held_out_summary", "held_out_reports")
    path = common.write_json(args.out, NAME, payload, sections, partial)
    print("wrote", path)
    fig, (curves,) = common.figure(1, width=6.5, height=4.5)
    width = max(1, outer_steps // 20)
    for label, result in common.read_json(path)["meta_training"].items():
        losses = np.asarray(result["meta_loss"], float)  # JSON null (NaN) -> nan
        # A NaN step plots as its seed's mean loss rather than blanking every later average; only
        # full windows are drawn.
        filled = np.stack([np.nan_to_num(curve, nan=np.nanmean(curve)) for curve in losses])
        smoothed = smooth(filled, width)[:, width - 1 :]
        steps = np.arange(width, outer_steps + 1)
        (line,) = curves.plot(steps, np.median(smoothed, axis=0), label=label)
        for curve in smoothed:
            curves.plot(
                steps,
                curve,
                color=line.get_color(),
                alpha=0.25,
                lw=0.8,
            )
    curves.set(xlabel="outer step", ylabel="meta-loss (mean train loss, smoothed)", yscale="log")
    curves.legend()
    print("wrote", common.save_figure(fig, args.out, NAME))
    return 0


def held_out_summary(evaluations: dict[str, list[dict]]) -> dict[str, dict[str, float]]:
    """``label -> {"train_loss", "test_accuracy", "per_meta_seed_train_loss"}`` on the held-out
    task: final full-split figures, mean over evaluation seeds, then over meta-training seeds."""
    summary = {}
    for label, reports in evaluations.items():
        train, accuracy = [], []
        for report in reports:
            for task in report["tasks"]:
                for run_label, run in task["runs"].items():
                    figures = run["metrics_mean"]
                    if run_label.lower().startswith("adam"):
                        summary["Adam (tuned)"] = {
                            "train_loss": figures["train_loss"],
                            "test_accuracy": figures.get("test_accuracy"),
                            "learning_rate": run["learning_rate"],
                        }
                    else:
                        train.append(figures["train_loss"])
                        accuracy.append(figures.get("test_accuracy", np.nan))
        summary[label] = {
            "train_loss": float(np.mean(train)),
            "test_accuracy": float(np.mean(accuracy)),
            "per_meta_seed_train_loss": train,
        }
    return summary


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
