"""Variance of ES-Single and PES, and the bias of truncated ES, against the number of windows T/K.

    python -m benchmarks.variance --record   # T = 1000, T/K in {1, 10, 100, 1000}
    python -m benchmarks.variance --quick    # T = 100, T/K in {1, 10, 100}, fewer pairs

write ``variance.json`` and ``variance.png`` to a scratch folder, ``--out`` or, with ``--record``,
``benchmarks/results/`` (``benchmarks/output.py``).

For each T/K (T fixed, K = T / (T/K)), lockstep particles run one whole inner problem in T/K
windows and every pair's per-window estimate is one sample. Pooling the windows gives the
distribution of a window's estimate over positions in the problem: what a staggered population
feeds the outer optimizer at every step. Reported per pair (divide by N for N pairs):

    variance ratio = trace(Cov[g_window]) / ||g||^2,    bias = ||E[g_window] - g|| / ||g||

and the same variance ratio for a pair's window estimates averaged over its whole problem (for
ES-Single that average is the full-ES estimate, whatever T/K).

Systems:

1. ``independent``: ``IndependentGradientSystem`` (no memory, P = 8, no noise): each step's loss
   depends only on that step's theta. The truth g is exact; theory: ES-Single and truncated ES
   ``P + 1`` whatever T/K, PES ``P + 1 + P (T/K - 1) / 2`` (window w weighs ``w`` accumulated
   draws); truncated ES is unbiased here, having no memory to truncate.
2. ``mlp_digits``: the digits MLP trained by SGD with momentum 0.9 whose log learning rate is
   theta, at lr = 0.01 (P = 1, ``meta_loss="train"``). The truth is estimated by the ES-Single
   mean (every ES-Single and PES setting is unbiased for it; with one seed, ES-Single's window
   estimates of a pair average to its full-ES estimate whatever T/K, so its own bias column is
   zero by construction).

Writes ``<out>/variance.json`` (with provenance) and ``<out>/variance.png``. ``--estimators
es_single,tes`` reruns a subset and keeps the other estimators' rows from the JSON already there
(``mlp_digits`` needs ES-Single for its reference gradient).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import output
from benchmarks.provenance import provenance
from meta_train.es.compile_options import FAST_COMPILE

ESTIMATORS = ("es_single", "pes", "tes")


def run_setting(
    system, theta, horizon, windows, estimator, num_pairs, sigma, seed, compiler_options
):
    """Per-pair per-window estimates ``[windows, N, P]`` and seconds (compile, run)."""
    from meta_train.es import engine

    config = engine.EngineConfig(
        num_pairs=num_pairs,
        window=horizon // windows,
        sigma=sigma,
        horizon=horizon,
        stagger=False,
        estimator=estimator,
    )
    particles, _ = engine.init_particles(system, config, theta, jax.random.key(seed))
    unroll = jax.jit(engine.unroll_window, static_argnums=(1,), donate_argnums=(3,))
    start = time.perf_counter()
    compiled = unroll.lower(system, config, theta, particles).compile(compiler_options)
    compile_seconds = time.perf_counter() - start
    start = time.perf_counter()
    samples = []
    for _ in range(windows):
        particles, outputs = compiled(system, theta, particles)
        samples.append(outputs.grad)
    samples = np.asarray(jnp.stack(samples))
    return samples, compile_seconds, time.perf_counter() - start


def summarise(samples: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """Variance ratios and relative bias of ``[windows, N, P]`` samples, with standard errors.

    ``window``: a window's estimate, pooled over the windows of the problem; ``problem``: a
    pair's estimates averaged over the T/K windows of its problem. Pairs are the independent
    units (a pair's windows are correlated), so every SE comes from the spread over pairs.
    """
    num_pairs, norm2 = samples.shape[1], float(truth @ truth)
    correction = num_pairs / (num_pairs - 1)
    mean = samples.mean((0, 1))
    window_squares = np.sum((samples - mean) ** 2, axis=2).mean(0) * correction
    pair_means = samples.mean(0)
    problem_squares = np.sum((pair_means - mean) ** 2, axis=1) * correction
    mean_se = pair_means.std(0, ddof=1) / math.sqrt(num_pairs)
    se = lambda values: float(values.std(ddof=1) / math.sqrt(num_pairs)) / norm2
    return {
        "variance_ratio": float(window_squares.mean()) / norm2,
        "variance_ratio_se": se(window_squares),
        "problem_variance_ratio": float(problem_squares.mean()) / norm2,
        "problem_variance_ratio_se": se(problem_squares),
        "bias": float(np.linalg.norm(mean - truth)) / math.sqrt(norm2),
        "bias_se": float(np.linalg.norm(mean_se)) / math.sqrt(norm2),
    }


def independent_system():
    from meta_train.es import reference_systems

    curvature = jnp.linspace(0.5, 2.0, 8)
    target = jnp.linspace(-1.0, 1.0, 8)
    system = reference_systems.IndependentGradientSystem.create(curvature, target)
    theta = jnp.zeros(8)
    return system, theta, np.asarray(system.gradient(theta))


def mlp_system():
    import lopt
    from meta_train import unrolled_tasks
    from tasks import registry

    family = registry.get_family("mlp_digits")
    optimizer = lopt.LearnableSGDM(initial_learning_rate=0.01, momentum=0.9, learnable=("log_lr",))
    theta = optimizer.init_meta_params(jax.random.key(0))
    return unrolled_tasks.TaskTrainingSystem(family, optimizer, "train"), theta


def measure(
    name, system, theta, truth, horizon, ratios, num_pairs, sigma, seed, log, fast, estimators
):
    """Rows for every estimator and T/K; ``truth=None``: the pooled ES-Single mean.

    ``fast``: compile without backend optimisation (for systems whose steps cost microseconds).
    """
    options = FAST_COMPILE if fast else None
    raw, rows = {}, []
    for estimator in estimators:
        for windows in ratios:
            samples, compile_s, run_s = run_setting(
                system, theta, horizon, windows, estimator, num_pairs, sigma, seed, options
            )
            raw[estimator, windows] = samples
            log(
                f"  {name:<12} {estimator:<10} T/K={windows:<5} compile {compile_s:6.1f}s "
                f"run {run_s:6.1f}s"
            )
            rows.append(
                {
                    "system": name,
                    "estimator": estimator,
                    "T_over_K": windows,
                    "window": horizon // windows,
                    "compile_seconds": compile_s,
                    "run_seconds": run_s,
                }
            )
    if truth is None:
        truth = np.mean([raw["es_single", w].mean((0, 1)) for w in ratios], axis=0)
    for row in rows:
        row.update(summarise(raw[row["estimator"], row["T_over_K"]], truth))
    return rows, truth


def theory(estimator: str, num_params: int, windows: int) -> float | None:
    """Variance ratio on the memoryless quadratic. Truncated ES is unbiased there (no memory to
    truncate) and its window estimate is an ES estimate with fresh noise, like ES-Single's."""
    if estimator in ("es_single", "tes"):
        return float(num_params + 1)
    if estimator == "pes":
        return num_params + 1 + num_params * (windows - 1) / 2
    return None


def table(rows: list[dict]) -> str:
    lines = [
        f"{'system':<12} {'estimator':<10} {'T/K':>5} {'K':>5} {'window trVar/|g|^2':>19} "
        f"{'(theory)':>9} {'problem trVar/|g|^2':>20} {'bias/|g|':>15}"
    ]
    for row in rows:
        expected = row.get("theory")
        lines.append(
            f"{row['system']:<12} {row['estimator']:<10} {row['T_over_K']:>5} {row['window']:>5} "
            f"{row['variance_ratio']:>10.4g} ±{row['variance_ratio_se']:<7.2g} "
            f"{'' if expected is None else f'{expected:.4g}':>9} "
            f"{row['problem_variance_ratio']:>11.4g} ±{row['problem_variance_ratio_se']:<7.2g} "
            f"{row['bias']:>7.3g} ±{row['bias_se']:<6.2g}"
        )
    return "\n".join(lines)


def plot(rows: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = sorted({row["system"] for row in rows}, key=[r["system"] for r in rows].index)
    quantities = (
        ("variance_ratio", "window estimate: trace Var / ||g||^2"),
        ("problem_variance_ratio", "problem average: trace Var / ||g||^2"),
    )
    figure, axes = plt.subplots(
        len(quantities), len(names), figsize=(5.5 * len(names), 8), squeeze=False
    )
    for column, name in enumerate(names):
        for row_index, (quantity, label) in enumerate(quantities):
            axis = axes[row_index][column]
            for estimator, style in zip(ESTIMATORS, ("o-", "s-", "^--"), strict=True):
                selected = [r for r in rows if r["system"] == name and r["estimator"] == estimator]
                x = [r["T_over_K"] for r in selected]
                y = [r[quantity] for r in selected]
                err = [2 * r[f"{quantity}_se"] for r in selected]
                axis.errorbar(x, y, yerr=err, fmt=style, capsize=3, label=estimator)
                expected = [r.get("theory") for r in selected]
                if quantity == "variance_ratio" and all(v is not None for v in expected):
                    axis.plot(x, expected, ":", color="gray", label=f"{estimator} theory")
            axis.set_xscale("log")
            axis.set_yscale("log")
            axis.set_xlabel("windows per inner problem T/K")
            axis.set_ylabel(label + " (per pair)")
            axis.set_title(name)
            axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def merge_rows(path: str, payload: dict, estimators: tuple[str, ...]) -> dict:
    """``payload`` with the rows of estimators not rerun kept from the JSON at ``path`` (same
    ``quick`` and ``seed`` required), each estimator's provenance, and each replaced estimator's
    old rows under ``superseded`` (the first time they are replaced)."""
    with open(path) as file:
        old = json.load(file)
    if (old["quick"], old["seed"]) != (payload["quick"], payload["seed"]):
        raise SystemExit(f"{path} has other settings (quick, seed); rerun every estimator")
    unrecorded = {"note": "run before provenance was recorded; see the git log of this JSON"}
    old_provenance = old.get("run_provenance", {})
    superseded = old.get("superseded", {})
    for estimator in estimators:
        superseded.setdefault(
            estimator,
            {
                "run_provenance": old_provenance.get(estimator, unrecorded),
                "rows": [row for row in old["rows"] if row["estimator"] == estimator],
            },
        )
    kept = [row for row in old["rows"] if row["estimator"] not in estimators]
    run_provenance = payload["run_provenance"] | {
        row["estimator"]: old_provenance.get(row["estimator"], unrecorded) for row in kept
    }
    order = {(r["system"], r["estimator"], r["T_over_K"]): i for i, r in enumerate(old["rows"])}
    rows = sorted(
        kept + payload["rows"],
        key=lambda r: order.get((r["system"], r["estimator"], r["T_over_K"]), len(order)),
    )
    return payload | {"rows": rows, "run_provenance": run_provenance, "superseded": superseded}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (a few minutes)")
    output.add_arguments(parser)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--skip-mlp", action="store_true", help="only the independent-gradient system"
    )
    parser.add_argument(
        "--estimators",
        type=lambda text: tuple(text.split(",")),
        default=ESTIMATORS,
        help="comma-separated subset to rerun; the others' rows are kept from the JSON in --out",
    )
    args = parser.parse_args(argv)
    out = output.resolve(args, "")
    estimators = tuple(e for e in ESTIMATORS if e in args.estimators)
    if set(args.estimators) - set(ESTIMATORS):
        raise SystemExit(f"--estimators: choose from {ESTIMATORS}, got {args.estimators}")
    if not args.skip_mlp and "es_single" not in estimators:
        raise SystemExit("mlp_digits's reference gradient is ES-Single's mean: include es_single")
    horizon, ratios = (100, (1, 10, 100)) if args.quick else (1000, (1, 10, 100, 1000))
    mlp_horizon, mlp_ratios = (10, (1, 10)) if args.quick else (horizon, ratios)
    pairs, mlp_pairs = (256, 16) if args.quick else (1024, 128)
    log = lambda message: print(message, flush=True)
    log(f"jax {jax.__version__} on {jax.devices()[0].platform}; quick={args.quick}")

    system, theta, truth = independent_system()
    rows, _ = measure(
        "independent",
        system,
        theta,
        truth,
        horizon,
        ratios,
        pairs,
        0.1,
        args.seed,
        log,
        True,
        estimators,
    )
    for row in rows:
        row["theory"] = theory(row["estimator"], len(truth), row["T_over_K"])
    if not args.skip_mlp:
        system, theta = mlp_system()
        mlp_rows, mlp_truth = measure(
            "mlp_digits",
            system,
            theta,
            None,
            mlp_horizon,
            mlp_ratios,
            mlp_pairs,
            0.1,
            args.seed,
            log,
            False,
            estimators,
        )
        log(f"  mlp_digits reference gradient d loss / d log_lr = {mlp_truth[0]:.4g}")
        rows += mlp_rows

    print(table(rows))
    os.makedirs(out, exist_ok=True)
    path = os.path.join(out, "variance.json")
    now = provenance(sys.argv)
    payload = {
        "quick": args.quick,
        "seed": args.seed,
        "provenance": now,
        "run_provenance": {estimator: now for estimator in estimators},
        "rows": rows,
    }
    if estimators != ESTIMATORS:
        payload = merge_rows(path, payload, estimators)
    with open(path, "w") as file:
        json.dump(payload, file, indent=2)
    plot(payload["rows"], os.path.join(out, "variance.png"))
    log(f"wrote {path} and variance.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
