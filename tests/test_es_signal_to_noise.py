"""benchmarks/es_signal_to_noise: its cosines match theory where the gradient is known, and its
longer windows are exactly the engine's."""

from __future__ import annotations

import dataclasses
import pathlib
import sys

import jax
import numpy as np
import pytest

from meta_train.es import engine
from meta_train.es.compile_options import FAST_COMPILE

ROOT = str(pathlib.Path(__file__).resolve().parents[1])
if ROOT not in sys.path:  # benchmarks/ is not an installed package; python -m runs it from ROOT
    sys.path.insert(0, ROOT)

from benchmarks import es_signal_to_noise as snr  # noqa: E402


def control_summary(name: str) -> tuple[dict, float]:
    """Summary of 4096 staggered ES-Single pair estimates (K = 5) on a reference system, and
    its exact ||g||^2."""
    system, theta, exact, horizon = snr.control_systems(dim=16)[name]
    config = engine.EngineConfig(num_pairs=4096, window=5, sigma=0.01, horizon=horizon)
    run = snr.draw_pair_estimates(system, config, theta, jax.random.key(1), 1, FAST_COMPILE)
    draws = np.asarray(run["grads"][0], np.float64)
    summary = snr.summarize(draws, (1, 4, 16, 64), np.random.default_rng(0), bootstrap=50)
    exact = exact.astype(np.float64)
    g_sq = float(exact @ exact)
    # The moments recover the known gradient's squared norm.
    assert abs(summary["mean_sq_norm"] - g_sq) < 4 * summary["mean_sq_norm_se"]
    return summary, g_sq


def test_cosine_matches_theory_with_the_exact_gradient():
    """Independent-gradient system (norms concentrate): the mean cosine between independent
    N-pair estimates = ||g||^2 / (||g||^2 + tr(Sigma) / N) with the exact g, from N = 1
    (cosine ~0.03) to N = 64 (~0.65)."""
    summary, g_sq = control_summary("independent")
    for row in summary["cosine"]:
        theory = snr.predicted_cosine(g_sq, summary["trace_cov"], row["pairs"])
        assert abs(row["mean"] - theory) < 4 * row["se"] + 0.01, (row, theory)
    assert summary["cosine"][-1]["mean"] > 0.5 > summary["cosine"][1]["mean"]
    assert summary["pairs_for_cosine_half"] == pytest.approx(
        summary["trace_cov"] / g_sq, rel=4 * summary["mean_sq_norm_se"] / g_sq
    )


def test_dot_ratio_matches_theory_with_memory():
    """Linear-quadratic system (memory, heavy-tailed norms): E[a.b] / E[||a||^2] on the subsets
    matches the formula with the exact g, within the error of ||g||^2's estimate."""
    summary, g_sq = control_summary("linear_quadratic")
    relative = 4 * summary["mean_sq_norm_se"] / g_sq
    for row in summary["cosine"]:
        theory = snr.predicted_cosine(g_sq, summary["trace_cov"], row["pairs"])
        assert row["dot_ratio"] == pytest.approx(theory, rel=relative), (row, theory)


def test_longer_windows_are_the_engines_windows():
    """Two base windows of K0 steps combine into exactly what one window of 2 K0 steps returns
    (same particles, keys and resets: horizons as short as the window force resets inside)."""
    system, theta, _, _ = snr.control_systems(dim=4)["linear_quadratic"]
    config = engine.EngineConfig(num_pairs=8, window=3, sigma=0.01, horizon=(3, 7))
    key = jax.random.key(2)
    base = snr.draw_pair_estimates(system, config, theta, key, 2, FAST_COMPILE)
    assert base["counts"].sum() == 2 * 3 * 8
    combined = snr.window_estimates(base["grads"], base["counts"], [1, 2])
    long = dataclasses.replace(config, window=6)
    one = snr.draw_pair_estimates(system, long, theta, key, 1, FAST_COMPILE)
    np.testing.assert_allclose(combined[1], base["grads"][0])
    np.testing.assert_allclose(combined[2], one["grads"][0], rtol=1e-5, atol=1e-6)


def test_subset_cosines_and_moments_on_known_draws():
    """Identical draws: cosine 1. Gaussian draws: unbiased ||mu||^2 and tr(Sigma)."""
    rng = np.random.default_rng(0)
    same = np.tile(rng.normal(size=(1, 5)), (8, 1))
    assert snr.subset_cosines(same, 2, rng, 3)["mean"] == pytest.approx(1.0)
    with pytest.raises(ValueError):
        snr.subset_cosines(same, 5, rng, 1)
    mu, scale = np.full(50, 0.1), np.linspace(0.5, 1.5, 50)
    draws = mu + scale * rng.normal(size=(20000, 50))
    mean_sq, trace = snr.moments(draws)
    assert mean_sq == pytest.approx(mu @ mu, abs=0.05)  # se ~ sqrt(2 tr(S^2)) / M ~ 0.008
    assert trace == pytest.approx(scale @ scale, rel=0.02)
    # SNR 0.5 / 54 per draw: ~108 pairs for cosine 0.5, inside the interval, which is not
    # shifted by the bootstrap's repeated draws (they would move it by 1 / M in SNR).
    summary = snr.summarize(draws[:2000], (), rng, bootstrap=100)
    low, high = summary["pairs_for_cosine_half_interval"]
    true_snr = (mu @ mu) / (scale @ scale)
    assert abs(summary["snr_per_pair"] - true_snr) < 4 * summary["snr_per_pair_se"]
    assert low < summary["pairs_for_cosine_half"] < high
