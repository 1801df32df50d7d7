"""How informative is one ES-Single outer-step estimate? Signal-to-noise at a fixed theta.

    python -m benchmarks.es_signal_to_noise            # pretrained_v2's groups at normalized-v1
    python -m benchmarks.es_signal_to_noise --quick    # control + one small group, a smoke run

At a fixed theta, ``R`` replicate populations (different particle seeds) of ``M`` pairs per task
group are built exactly as a meta-training run builds them (``train.build_groups``,
``engine.init_particles``: staggered, every pair burnt in to a uniform offset of its first
problem), and each runs windows of the base length ``K0``. A pair's estimate for a window of
``K = k K0`` steps is rebuilt from its first ``k`` base windows, exactly (ES-Single's noise is not
redrawn at window starts, so the steps and keys are those of one ``K``-step window):

    g_j(K) = sum_w g_{j,w} max(c_{j,w}, 1) / max(sum_w c_{j,w}, 1)     (c: unmasked steps)

Every pair holds its own key and offset, so the ``R M`` pair estimates of a group are independent
draws ``g_j`` with mean ``mu`` and covariance ``Sigma``; the combined estimate's draw is
``sum_i w_i g_{i,j}`` over the groups (pair ``j`` of each, weights normalised as in
``meta_train.outer``), so "N pairs" of the combined estimate means N pairs per group.
An outer step with N pairs sees ``g_N``, the mean of N draws. Reported per group and combined:

- ``cosine``: mean cosine between two independent ``g_N`` (disjoint subsets of ``2N`` draws,
  averaged over random partitions; standard error over the disjoint subset pairs of one partition);
- ``theory``: ``||mu||^2 / (||mu||^2 + tr(Sigma) / N)`` from the moments of all draws, with
  ``||mu||^2`` debiased (``||mean||^2 - tr(Sigma) / (R M)``): exactly ``E[a.b] / E[||a||^2]``
  for two independent N-pair estimates, which ``dot_ratio`` measures on the subsets; the mean
  cosine is close to it when the estimates' norms concentrate, above it when they are
  heavy-tailed;
- ``snr_per_pair``: ``||mu||^2 / tr(Sigma)`` (an N-pair estimate's SNR is N times it) and
  ``pairs_for_cosine_half``: ``tr(Sigma) / ||mu||^2`` (where ``theory`` reaches 0.5), with
  bootstrap standard errors over draws (for the pairs, the 10-90% normal interval of the SNR).
  Isotropic Gaussian ES has ``tr(Sigma) >= (P + 1) ||mu||^2`` per pair where the loss is linear
  at scale sigma (``Cov = 2A + tr(A) I - mu mu^T``, ``A = E[g g^T] >= mu mu^T``), so a cosine of
  0.5 needs at least ``P + 1`` pairs whatever the task noise (``es_floor_pairs``).

Positive control (``control``): the same code on ``reference_systems``' systems with a known
gradient ``g``: ``dot_ratio`` must match ``||g||^2 / (||g||^2 + tr(Sigma) / N)`` (``exact_theory``)
and so must the mean cosine where the norms concentrate (the independent-gradient system).
Writes ``es_signal_to_noise.json`` (with provenance) to scratch, ``--out`` or, with ``--record``,
``benchmarks/results/``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import time
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from benchmarks import output
from benchmarks.provenance import provenance
from meta_train.es import engine, reference_systems
from meta_train.es.compile_options import FAST_COMPILE

# --- Statistics on [M, P] draws (pure numpy).


def window_estimates(grads: np.ndarray, counts: np.ndarray, windows: Sequence[int]) -> dict:
    """Per-pair estimates of longer windows from consecutive base windows.

    ``grads``: ``[W, M, P]`` the pairs' estimates of ``W`` consecutive base windows; ``counts``:
    ``[W, M]`` their unmasked steps. Returns ``{k: [M, P]}``, the estimate of the first ``k``
    base windows as one window: the count-weighted mean of the base estimates (``2 sigma^2``
    cancels).
    """
    weighted = grads * np.maximum(counts, 1)[..., None]
    return {k: weighted[:k].sum(0) / np.maximum(counts[:k].sum(0), 1)[:, None] for k in windows}


def moments(draws: np.ndarray) -> tuple[float, float]:
    """``(||mu||^2, tr(Sigma))`` of ``[M, P]`` independent draws, both unbiased."""
    count = draws.shape[0]
    trace = float(np.sum(np.var(draws, axis=0, ddof=1)))
    mean_sq = float(np.sum(np.mean(draws, axis=0) ** 2)) - trace / count
    return mean_sq, trace


def predicted_cosine(mean_sq: float, trace: float, num_pairs: int) -> float:
    """``||mu||^2 / (||mu||^2 + tr(Sigma) / N)``: ``E[a.b] / E[||a||^2]`` for two independent
    N-draw means ``a``, ``b``; the mean cosine tends to it as P grows (concentration)."""
    mean_sq = max(mean_sq, 0.0)
    return mean_sq / (mean_sq + trace / num_pairs) if mean_sq + trace > 0 else float("nan")


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1)
    return np.sum(a * b, axis=-1) / np.maximum(norms, np.finfo(np.float64).tiny)


def subset_cosines(
    draws: np.ndarray, num_pairs: int, rng: np.random.Generator, partitions: int
) -> dict[str, float]:
    """Mean cosine between two means ``a``, ``b`` of ``num_pairs`` disjoint draws, over
    ``partitions`` random partitions of the draws into blocks of ``2 N``.

    ``se``: std of one partition's block cosines over the square root of its block count (blocks
    are disjoint, hence independent). ``dot_ratio``: ``mean(a.b) / mean(||a||^2)`` over the same
    blocks, the quantity ``predicted_cosine`` estimates; the mean cosine departs from it where
    ``||a||`` fluctuates (heavy-tailed draws weigh less in a cosine than in a dot product).
    """
    blocks = draws.shape[0] // (2 * num_pairs)
    if blocks < 1:
        raise ValueError(f"{draws.shape[0]} draws cannot give two disjoint means of {num_pairs}")
    cosines, dots, squares = [], [], []
    for _ in range(partitions):
        order = rng.permutation(draws.shape[0])[: blocks * 2 * num_pairs]
        means = draws[order].reshape(blocks, 2, num_pairs, -1).mean(2)
        cosines.append(_cosines(means[:, 0], means[:, 1]))
        dots.append(np.sum(means[:, 0] * means[:, 1], axis=-1))
        squares.append(np.sum(means**2, axis=-1).mean(-1))
    first = cosines[0]
    se = float(np.std(first, ddof=1) / math.sqrt(blocks)) if blocks > 1 else float("nan")
    return {
        "mean": float(np.mean(cosines)),
        "se": se,
        "blocks": blocks,
        "dot_ratio": float(np.mean(dots) / np.mean(squares)),
    }


# Normal quantile of 0.9: the pairs' interval is the 10-90% one.
_Z90 = 1.2816


def _reciprocal(snr: float) -> float:
    return 1.0 / snr if snr > 0 else float("inf")


def summarize(
    draws: np.ndarray,
    pair_counts: Sequence[int],
    rng: np.random.Generator,
    partitions: int = 20,
    bootstrap: int = 200,
) -> dict[str, Any]:
    """Cosine curve, moment prediction, SNR and pairs for cosine 0.5 of ``[M, P]`` draws."""
    draws = np.asarray(draws, np.float64)
    mean_sq, trace = moments(draws)
    resampled = []
    for _ in range(bootstrap):
        rows = draws[rng.integers(0, draws.shape[0], draws.shape[0])]
        resampled.append(moments(rows))
    boot_mean_sq, boot_trace = np.asarray(resampled).T
    snr = mean_sq / trace
    snr_se = float(np.std(boot_mean_sq / boot_trace))
    # The bootstrap gives spreads only: a resample repeats draws, which the debiased ||mu||^2
    # counts as independent, so its resamples sit about tr(Sigma) / M (SNR 1 / M) too high and
    # their quantiles would be shifted. 1 / snr is heavy-tailed near 0, hence an interval.
    snr_low, snr_high = snr - _Z90 * snr_se, snr + _Z90 * snr_se
    curve = []
    for n in pair_counts:
        if draws.shape[0] // (2 * n) < 1:
            continue
        row = {"pairs": int(n), **subset_cosines(draws, n, rng, partitions)}
        row["theory"] = predicted_cosine(mean_sq, trace, n)
        row["expected_norm"] = math.sqrt(max(mean_sq, 0.0) + trace / n)
        curve.append(row)
    return {
        "draws": int(draws.shape[0]),
        "mean_sq_norm": mean_sq,
        "mean_sq_norm_se": float(np.std(boot_mean_sq)),
        "trace_cov": trace,
        "trace_cov_se": float(np.std(boot_trace)),
        "snr_per_pair": snr,
        "snr_per_pair_se": snr_se,
        "pairs_for_cosine_half": _reciprocal(snr),
        "pairs_for_cosine_half_interval": [_reciprocal(snr_high), _reciprocal(snr_low)],
        "cosine": curve,
    }


# --- Drawing pair estimates with the engine.


def draw_pair_estimates(
    system: Any,
    config: engine.EngineConfig,
    theta: Any,
    key: jax.Array,
    num_windows: int,
    compiler_options: dict | None = None,
) -> dict[str, np.ndarray]:
    """One staggered population (``engine.init_particles``) run for ``num_windows`` base windows of
    ``config.window`` steps: ``grads [W, N, P]``, ``counts [W, N]``, ``nonfinite [W, N]``,
    ``loss [W, N]`` (mean twin loss per unmasked step)."""
    particles, _ = engine.init_particles(
        system, config, theta, key, compiler_options=compiler_options
    )
    unroll = jax.jit(engine.unroll_window, static_argnums=(1,), donate_argnums=(3,))
    compiled = unroll.lower(system, config, theta, particles).compile(compiler_options)
    rows: dict[str, list] = {"grads": [], "counts": [], "nonfinite": [], "loss": []}
    for _ in range(num_windows):
        particles, out = compiled(system, theta, particles)
        rows["grads"].append(out.grad)
        rows["counts"].append(out.count)
        rows["nonfinite"].append(out.nonfinite)
        rows["loss"].append(out.loss_sum / jnp.maximum(out.count, 1))
    return {name: np.asarray(jnp.stack(values)) for name, values in rows.items()}


def measure_groups(
    groups: Sequence[Any],
    theta: Any,
    windows: Sequence[int],
    replicates: int,
    seed: int,
    compiler_options: dict | None = None,
    log=print,
) -> tuple[dict[int, dict[str, np.ndarray]], dict[str, dict]]:
    """Draws ``{K: {group name: [R M, P]}}`` (plus ``"combined"``) and per-group run facts.

    ``groups``: ``outer.TaskGroup``s; each group's engine config is used with its window replaced
    by the base window ``gcd(windows)``. Replicate ``r``'s group keys are split from
    ``fold_in(key(seed), r)`` as ``outer.init_meta_state`` splits its key.
    """
    base = math.gcd(*windows)
    num_windows = max(windows) // base
    ks = [k // base for k in windows]
    draws: dict[int, dict[str, list]] = {k: {} for k in windows}
    facts: dict[str, dict] = {}
    for r in range(replicates):
        group_keys = jax.random.split(jax.random.fold_in(jax.random.key(seed), r), len(groups))
        for group, key in zip(groups, group_keys, strict=True):
            config = dataclasses.replace(group.engine_config, window=base)
            start = time.perf_counter()
            run = draw_pair_estimates(
                group.system, config, theta, key, num_windows, compiler_options
            )
            seconds = time.perf_counter() - start
            per_k = window_estimates(run["grads"], run["counts"], ks)
            for k, kk in zip(windows, ks, strict=True):
                draws[k].setdefault(group.name, []).append(per_k[kk])
            fact = facts.setdefault(
                group.name, {"seconds": [], "nonfinite_steps": 0, "steps": 0, "loss": []}
            )
            fact["seconds"].append(round(seconds, 2))
            fact["nonfinite_steps"] += int(run["nonfinite"].sum())
            fact["steps"] += int(run["counts"].sum() + run["nonfinite"].sum())
            fact["loss"].append(float(np.mean(run["loss"])))
            log(f"  replicate {r} {group.name}: {seconds:.1f}s")
    weights = np.asarray([g.weight for g in groups], np.float64)
    weights = weights / weights.sum()
    out: dict[int, dict[str, np.ndarray]] = {}
    for k in windows:
        per_group = {name: np.concatenate(parts) for name, parts in draws[k].items()}
        combined = sum(w * per_group[g.name] for w, g in zip(weights, groups, strict=True))
        out[k] = {**per_group, "combined": combined}
    for fact in facts.values():
        fact["mean_loss"] = float(np.mean(fact.pop("loss")))
    return out, facts


# --- The positive control.


def control_systems(dim: int) -> dict[str, tuple[Any, Any, np.ndarray, int]]:
    """``{name: (system, theta, exact gradient [P], fixed horizon)}`` from reference_systems."""
    independent = reference_systems.IndependentGradientSystem.create(
        curvature=np.linspace(0.5, 2.0, dim), target=np.zeros(dim), noise_scale=1.0
    )
    theta = {"w": jnp.full((dim,), 0.5, jnp.float32)}
    lq_horizon = 40
    lq = reference_systems.LinearQuadraticSystem.create(
        jax.random.key(3), state_dim=4, theta_dim=dim, noise_scale=0.1
    )
    return {
        "independent": (independent, theta, np.asarray(independent.gradient(theta)), 1000),
        "linear_quadratic": (
            lq,
            theta,
            np.asarray(lq.exact_gradient(theta, lq_horizon)["w"]),
            lq_horizon,
        ),
    }


def run_control(
    num_pairs: int, window: int, pair_counts: Sequence[int], dim: int = 16, seed: int = 0
) -> dict[str, dict]:
    """Cosines on the reference systems against ``||g||^2 / (||g||^2 + tr(Sigma)/N)`` with the
    exact ``g`` (``tr(Sigma)`` from the draws). Fixed horizons, staggered: uniform offsets make a
    window's expected estimate the gradient of the mean per-step loss of a whole problem."""
    results = {}
    rng = np.random.default_rng(seed)
    for name, (system, theta, exact, horizon) in control_systems(dim).items():
        config = engine.EngineConfig(
            num_pairs=num_pairs, window=window, sigma=0.01, horizon=horizon
        )
        run = draw_pair_estimates(system, config, theta, jax.random.key(seed), 1, FAST_COMPILE)
        draws = np.asarray(run["grads"][0], np.float64)
        summary = summarize(draws, pair_counts, rng, bootstrap=50)
        g_sq = float(np.sum(exact.astype(np.float64) ** 2))
        for row in summary["cosine"]:
            row["exact_theory"] = predicted_cosine(g_sq, summary["trace_cov"], row["pairs"])
        summary["exact_sq_norm"] = g_sq
        results[name] = summary
    return results


# --- The real measurement.


def build_real(config_name: str, rule: str) -> tuple[list, Any, str]:
    """pretrained_v2's groups (as ``train.build_groups`` builds them) and theta.

    ``rule="v1"``: normalized-v1's optimizer and theta as ``lopt.load_optimizer`` returns them;
    ``rule="config"``: the config's optimizer with theta warm-started from normalized-v1 (what a
    v2 run's first step sees: v1's theta, the new entries at their neutral initial values).
    """
    import lopt
    from meta_train import config_flags, train, warm_start

    config = config_flags.load_config(config_name)
    settings = config_flags.validate(config)
    if rule == "v1":
        optimizer, theta, _ = lopt.load_optimizer(lopt.pretrained_path("normalized-v1"))
        step_size = lopt.load_step_size(lopt.pretrained_path("normalized-v1"))
        system = settings.system.replace(optimizer=optimizer, step_size=step_size)
        settings = settings._replace(system=system)
    else:
        optimizer = settings.optimizer
        theta = optimizer.init_meta_params(jax.random.key(config.seed))
        theta, _ = warm_start.warm_start("normalized-v1", optimizer, theta)
    return train.build_groups(settings), theta, config.meta_loss


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="control + one small group")
    parser.add_argument("--config", default="pretrained_v2")
    parser.add_argument("--rule", choices=("v1", "config"), default="v1")
    parser.add_argument("--replicates", type=int, default=16, help="R populations per group")
    parser.add_argument("--windows", default="10,20,50", help="truncation windows K")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--sigma", type=float, default=None, help="perturbation scale (default: the config's)"
    )
    # digits compiles in about half the time of conv, the config's first group.
    parser.add_argument("--quick-group", default="digits", help="the group --quick measures")
    output.add_arguments(parser)
    args = parser.parse_args(argv)
    path = output.resolve(args, "es_signal_to_noise.json")
    windows = [int(k) for k in args.windows.split(",")]
    started = time.perf_counter()
    meta = provenance(argv)
    rng = np.random.default_rng(args.seed)

    print("positive control (reference systems, exact gradient)", flush=True)
    control = run_control(
        num_pairs=512 if args.quick else 2048, window=5, pair_counts=(1, 4, 16, 64)
    )
    for name, summary in control.items():
        for row in summary["cosine"]:
            print(
                f"  {name:16s} N={row['pairs']:3d} cos {row['mean']:.3f} +- {row['se']:.3f}"
                f"  dot ratio {row['dot_ratio']:.3f}  exact-g theory {row['exact_theory']:.3f}",
                flush=True,
            )

    groups, theta, meta_loss = build_real(args.config, args.rule)
    # Fast compiles: each group's two programs take far longer to compile than a replicate takes
    # to run (the JSON's ``seconds``), so XLA's full optimisation (compile_options) would cost
    # more than its faster steps save.
    compiler_options = FAST_COMPILE
    replicates = args.replicates
    if args.sigma is not None:
        groups = [
            group._replace(engine_config=dataclasses.replace(group.engine_config, sigma=args.sigma))
            for group in groups
        ]
    if args.quick:
        # One group, short horizons and windows: a smoke run of the same path.
        by_name = {group.name: group for group in groups}
        if args.quick_group not in by_name:
            raise SystemExit(f"--quick-group {args.quick_group!r}: choose one of {list(by_name)}")
        group = by_name[args.quick_group]
        short = dataclasses.replace(group.engine_config, horizon=(10, 30), num_pairs=4)
        groups, windows, replicates = [group._replace(engine_config=short)], [5, 10], 2
    num_params = int(ravel_pytree(theta)[0].size)
    print(f"theta: {num_params} entries; {len(groups)} groups; windows {windows}", flush=True)
    draws, facts = measure_groups(groups, theta, windows, replicates, args.seed, compiler_options)
    pairs_per_replicate = groups[0].engine_config.num_pairs
    pair_counts = sorted({1, 2, 4, 8, 16, 32, pairs_per_replicate, 64})
    results: dict[str, dict] = {}
    for k in windows:
        results[str(k)] = {}
        for name, group_draws in draws[k].items():
            results[str(k)][name] = summarize(group_draws, pair_counts, rng)
    print_table(results, len(groups))
    record = {
        "provenance": meta,
        "settings": {
            "config": args.config,
            "rule": args.rule,
            "meta_loss": meta_loss,
            "theta_entries": num_params,
            "es_floor_pairs": num_params + 1,
            "replicates": replicates,
            "pairs_per_replicate": pairs_per_replicate,
            "windows": windows,
            "groups": {
                g.name: {
                    "weight": g.weight,
                    "horizon": list(np.atleast_1d(g.engine_config.horizon)),
                    "sigma": g.engine_config.sigma,
                }
                for g in groups
            },
            "quick": args.quick,
            "compiler_options": compiler_options,
        },
        "control": control,
        "groups": facts,
        "results": results,
        "seconds": round(time.perf_counter() - started, 1),
    }
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(record, f, indent=1, default=float)
    print(f"wrote {path} in {record['seconds']}s", flush=True)
    return 0


def print_table(results: dict[str, dict], num_groups: int) -> None:
    """Per window: each group's pairs for cosine 0.5 and SNR; the combined cosine curve."""
    for k, by_group in results.items():
        print(f"K = {k}", flush=True)
        for name, s in by_group.items():
            low, high = s["pairs_for_cosine_half_interval"]
            print(
                f"  {name:16s} snr/pair {s['snr_per_pair']:.4f} +- {s['snr_per_pair_se']:.4f}"
                f"  pairs for cos 0.5: {s['pairs_for_cosine_half']:.0f} [{low:.0f}, {high:.0f}]",
                flush=True,
            )
        for row in by_group["combined"]["cosine"]:
            print(
                f"  combined N={row['pairs']:3d}/group ({num_groups * row['pairs']} pairs):"
                f" cos {row['mean']:.3f} +- {row['se']:.3f} (dot ratio {row['dot_ratio']:.3f},"
                f" theory {row['theory']:.3f},"
                f" {row['blocks']} blocks)",
                flush=True,
            )


if __name__ == "__main__":
    raise SystemExit(main())
