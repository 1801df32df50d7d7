"""Variance of the gradient estimate of a whole inner problem against the number of unrolls
(ES-Single paper, Sec. 4 and Fig. 2).

An inner problem of ``T`` steps is cut into ``W = T / K`` windows; an estimator's estimate of the
gradient of the problem's mean loss is the mean of its ``W`` per-window estimates. Every pair is
one independent sample (the engine's per-pair outputs, ``engine.unroll_window``), lockstep, so the
``W`` windows are exactly one problem. We report ``tr Cov / ||grad||^2`` with ``grad`` exact.

Theory for quadratic losses (antithetic differences are exact): ES-Single is ``eps eps^T G /
sigma^2`` whatever ``W`` is, so its normalised variance is ``P + 1``, flat. PES, when each window's
loss depends only on that window's theta (``IndependentGradientSystem``), has variance
``sum_w (w P + 1) ||g_w||^2 / W^2`` for per-window gradients ``g_w``: with independent (noisy)
per-step gradients it grows linearly in ``W``; with identical (fully correlated) ones it falls
to about ``P / 2`` and PES is *lower* than ES-Single, as the paper notes.

    python -m benchmarks.paper.variance_vs_unrolls [--quick] [--out DIR | --record]
"""

from __future__ import annotations

import functools
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.paper import common
from meta_train.es import engine, reference_systems
from meta_train.es.compile_options import FAST_COMPILE

NAME = "variance_vs_unrolls"
NUM_THETA = 4  # P for the memoryless systems


def make_systems() -> dict[str, tuple[object, jax.Array, object]]:
    """``name -> (system, theta, exact_gradient(horizon) -> flat [P])``."""
    target = jnp.full((NUM_THETA,), 0.5)
    theta = jnp.zeros((NUM_THETA,))
    independent = reference_systems.IndependentGradientSystem.create(
        jnp.ones(NUM_THETA), target, noise_scale=2.0
    )
    correlated = reference_systems.IndependentGradientSystem.create(jnp.ones(NUM_THETA), target)
    linear = reference_systems.LinearQuadraticSystem.create(
        jax.random.key(3), state_dim=3, theta_dim=2, noise_scale=0.1
    )
    linear_theta = jnp.zeros((2,))
    return {
        "independent per-step gradients (noisy, memoryless)": (
            independent,
            theta,
            lambda horizon: independent.gradient(theta),
        ),
        "correlated per-step gradients (identical, memoryless)": (
            correlated,
            theta,
            lambda horizon: correlated.gradient(theta),
        ),
        "linear dynamics (memory), LinearQuadraticSystem": (
            linear,
            linear_theta,
            lambda horizon: linear.exact_gradient(linear_theta, horizon),
        ),
    }


def problem_estimates(
    system,
    theta: jax.Array,
    estimator: str,
    horizon: int,
    window: int,
    samples: int,
    seed: int,
    compiler_options: dict | None = None,
) -> np.ndarray:
    """``[samples, P]``: each pair's estimate of the whole problem's gradient (mean of its
    ``horizon / window`` per-window estimates)."""
    config = engine.EngineConfig(
        num_pairs=samples,
        window=window,
        sigma=0.1,
        horizon=horizon,
        stagger=False,
        estimator=estimator,
    )
    particles, _ = engine.init_particles(system, config, theta, jax.random.key(seed))
    num_windows = horizon // window

    @functools.partial(jax.jit, compiler_options=compiler_options)
    def estimates(particles):
        def body(particles, _):
            particles, outputs = engine.unroll_window(system, config, theta, particles)
            return particles, outputs.grad

        _, grads = jax.lax.scan(body, particles, None, length=num_windows)
        return jnp.mean(grads, axis=0)

    return np.asarray(estimates(particles))


def pes_theory_identical(num_windows: int) -> float:
    """PES's normalised variance with identical per-window gradients (see module docstring)."""
    w = np.arange(1, num_windows + 1)
    return float(np.sum(w * NUM_THETA + 1) / num_windows**2)


def main(argv: list[str] | None = None) -> int:
    parse = common.parser(__doc__.splitlines()[0])
    parse.add_argument("--horizon", type=int, default=32, help="T, steps per inner problem")
    parse.add_argument("--samples", type=int, default=4000, help="independent pairs per point")
    args = common.parse_args(parse, argv)
    horizon, samples = args.horizon, args.samples
    windows_counts = [w for w in (1, 2, 4, 8, 16, 32, 64) if horizon % w == 0 and w <= horizon]
    problems = make_systems()
    if args.quick:
        horizon, samples, windows_counts = 4, 200, [1, 4]
        problems = dict(list(problems.items())[:1])
    estimators = ("es_single", "pes")
    results = {}
    for name, (system, theta, exact) in problems.items():
        grad = np.asarray(exact(horizon))
        grad_sq = float(np.sum(grad**2))
        print(f"{name}: T = {horizon}, P = {grad.size}, ||grad|| = {np.sqrt(grad_sq):.4f}")
        entry = {"grad": grad, "num_theta": grad.size}
        for estimator in estimators:
            rows = []
            for num_windows in windows_counts:
                start = time.perf_counter()
                est = problem_estimates(
                    system,
                    theta,
                    estimator,
                    horizon,
                    horizon // num_windows,
                    samples,
                    seed=1,
                    compiler_options=FAST_COMPILE if args.quick else None,
                )
                mean = est.mean(axis=0)
                variance = float(np.sum(est.var(axis=0, ddof=1)))
                # z-score of the mean against the exact gradient: the bias check.
                stderr = np.sqrt(est.var(axis=0, ddof=1) / samples)
                z = float(np.max(np.abs(mean - grad) / stderr))
                # Standard error of the trace estimate (per-coordinate variances add).
                centred = (est - mean) ** 2
                variance_se = float(np.sqrt(np.sum(centred, axis=1).var(ddof=1) / samples))
                rows.append(
                    {
                        "num_windows": num_windows,
                        "window": horizon // num_windows,
                        "normalised_variance": variance / grad_sq,
                        "normalised_variance_se": variance_se / grad_sq,
                        "max_bias_z": z,
                        "seconds": time.perf_counter() - start,
                    }
                )
                print(
                    f"  {estimator:9s} W = {num_windows:3d} (K = {horizon // num_windows:3d}): "
                    f"tr Cov / ||g||^2 = {variance / grad_sq:8.2f} +- {variance_se / grad_sq:.2f}"
                    f"   max |bias| z = {z:.2f}"
                )
            entry[estimator] = rows
        results[name] = entry
    payload = {
        "experiment": NAME,
        "horizon": horizon,
        "samples": samples,
        "sigma": 0.1,
        "es_single_theory": "P + 1 for deterministic quadratics",
        "pes_theory_identical": {w: pes_theory_identical(w) for w in windows_counts},
        "quick": args.quick,
        "systems": results,
    }
    print("wrote", common.write_json(args.out, NAME, payload))
    fig, axes = common.figure(len(results))
    for axis, (name, entry) in zip(axes, results.items(), strict=True):
        for estimator, label in (("es_single", "ES-Single"), ("pes", "PES")):
            rows = entry[estimator]
            axis.errorbar(
                [r["num_windows"] for r in rows],
                [r["normalised_variance"] for r in rows],
                yerr=[2 * r["normalised_variance_se"] for r in rows],
                marker="o",
                capsize=3,
                label=label,
            )
        axis.axhline(entry["num_theta"] + 1, color="gray", linestyle="--", label="P + 1")
        if name.startswith("correlated"):
            axis.plot(
                windows_counts,
                [pes_theory_identical(w) for w in windows_counts],
                "k:",
                label="PES theory",
            )
        axis.set(xscale="log", yscale="log", xlabel="number of unrolls W = T / K")
        axis.set_ylabel("tr Cov / ||grad||^2")
        axis.set_title(name, fontsize=8)
        axis.legend(fontsize=7)
    print("wrote", common.save_figure(fig, args.out, NAME))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
