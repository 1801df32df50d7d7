"""Gradient estimators for unrolled systems: pure functions on the particle engine's outputs.

All evolution-strategies estimators share one bookkeeping. Pair ``j`` runs two twins, with
``theta + eps_j`` and ``theta - eps_j`` (``eps ~ N(0, sigma^2 I)``, flat over theta's ``P``
entries), and holds a weight ``xi_j`` that its loss differences are multiplied by. Per window of
``K`` inner steps, with ``mask`` dropping steps whose twin losses are not finite,

    g_j = sum_steps xi_j * (l+ - l-) * mask / (2 sigma^2 * max(count_j, 1)),   g = (1/N) sum_j g_j

so ``g_j = xi_j (L+_j - L-_j) / (2 sigma^2)`` with ``L`` the masked mean window loss. Note the
``2 sigma^2``: the ES-Single paper's equation 4 drops the 2, its code has it. The estimators only
differ in when noise is redrawn and what ``xi`` becomes:

=============  ======================================  =======================================
estimator      at a window start                       at a particle reset (inside the window)
=============  ======================================  =======================================
``es_single``  nothing                                 fresh eps, ``xi = eps``
``full_es``    nothing (and K = T, lockstep)           fresh eps, ``xi = eps``
``pes``        fresh eps, ``xi += eps``                fresh eps, ``xi = eps``
``gpes``       as PES every M windows                  fresh eps, ``xi = eps``
``tes``        twins take the ``+eps`` twin's state;   fresh eps, ``xi = eps``
               fresh eps, ``xi = eps``
``tbptt``      (no noise: ``jax.grad`` through the window, the entering state held fixed)
=============  ======================================  =======================================

Because ``xi`` is applied per step, a reset inside a window splits it: the losses before the reset
are weighted by the old ``xi`` and those after by the new eps, which is PES's split window. A
"window" for the redraw rules counts whole and partial windows: a noise draw is only replaced once
at least one step has run under it, so PES with M = 1 never throws away an unused draw.

Fitness shaping (``EngineConfig.shaping``): ``"sign"`` replaces each pair's estimate by
``g_j 2 sigma / |L+_j - L-_j| = xi_j sign(L+_j - L-_j) / sigma`` (``sign_shaped``), so every pair
casts a vote of one size whatever its loss scale or an outlier's size, and groups with different
loss scales weigh alike in a combined estimate (VeLO shapes its ES estimates this way). It is no
longer unbiased for the gradient: for a loss linear at scale sigma its mean is
``sqrt(2 / pi) grad / |grad|``, the direction of descent.

TES is learned_optimization's ``TruncatedES``: each truncation starts both twins from one shared
state and returns the positive twin's final state as the next shared state
(``unroll_state=p_state``), so a window's estimate sees theta's effect over that window alone.
A problem that has not taken a step yet (reset at the previous window's last step, or new) keeps
the noise it was initialised with, so its window sees ``init_state``'s dependence on theta, as a
window with a reset inside it does. TBPTT does the same by differentiating ``init_state`` in the
window that runs a problem's first step (see ``engine.unroll_window``).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

ESTIMATORS = ("es_single", "pes", "tes", "full_es", "tbptt", "gpes")
SHAPINGS = ("none", "sign")
# Estimators whose noise is redrawn at window starts: (accumulate into xi?)
_REDRAWS = {"pes": True, "gpes": True, "tes": False}
# Estimators whose twins restart from one shared state when their noise is redrawn.
_SHARED_STATE = ("tes",)


class Noise(NamedTuple):
    """One pair's perturbation state (leading axes added by the engine).

    ``eps``: ``[P]`` the perturbation in force; ``xi``: ``[P]`` the weight of the pair's loss
    differences; ``windows``: ``[]`` int32, windows (whole or partial) run under ``eps``.
    """

    eps: jax.Array
    xi: jax.Array
    windows: jax.Array


class WindowOutputs(NamedTuple):
    """Per-pair results of one window, leading axis ``N`` (this device's pairs).

    ``grad``: ``[N, P]`` the pair's flat gradient estimate ``g_j``; ``count``: ``[N]`` int32
    unmasked steps; ``loss_sum``: ``[N]`` sum over unmasked steps of the twins' mean loss;
    ``loss_diff``: ``[N]`` ``L+_j - L-_j`` (masked mean window losses); ``nonfinite``: ``[N]``
    int32 steps with a non-finite twin loss (for TBPTT, plus one if the pair's window gradient was
    non-finite and dropped); ``resets``: ``[N]`` int32 particle resets.
    """

    grad: jax.Array
    count: jax.Array
    loss_sum: jax.Array
    loss_diff: jax.Array
    nonfinite: jax.Array
    resets: jax.Array


class Estimate(NamedTuple):
    """``grad``: pytree like theta, the estimate of d meta_loss / d theta; ``meta_loss``: scalar,
    the mean unmasked per-step loss over pairs, twins and steps (NaN if every step was masked);
    ``diagnostics``: ``loss_diff_std`` (std over pairs of ``L+ - L-``), ``masked_fraction``,
    ``nonfinite_count``, ``num_resets``."""

    grad: object
    meta_loss: jax.Array
    diagnostics: dict[str, jax.Array]


def uses_noise(estimator: str) -> bool:
    """Whether the twins are perturbed (every estimator but TBPTT)."""
    return estimator != "tbptt"


def redraws_at_window_start(estimator: str) -> bool:
    """Whether the estimator draws fresh noise at window starts (PES, GPES, TES)."""
    return estimator in _REDRAWS


def shares_state_at_window_start(estimator: str) -> bool:
    """Whether both twins restart from the ``+eps`` twin's state when the noise is redrawn (TES)."""
    return estimator in _SHARED_STATE


def redraw_due(estimator: str, resample_every: int, noise: Noise) -> jax.Array:
    """``[]`` bool: whether this window start replaces the noise (at least one window, or ``M``
    for GPES, has run under it); always False for estimators that do not redraw."""
    if estimator not in _REDRAWS:
        return jnp.zeros((), bool)
    every = resample_every if estimator == "gpes" else 1
    return noise.windows >= every


def noise_at_reset(fresh: jax.Array, mid_window: jax.Array) -> Noise:
    """A new inner problem: ``eps = xi = fresh``. The rest of the current window runs under it
    (counts as one window) unless the reset happened at the window's last step."""
    return Noise(fresh, fresh, jnp.where(mid_window, 1, 0).astype(jnp.int32))


def noise_at_window_start(
    estimator: str, resample_every: int, noise: Noise, fresh: jax.Array
) -> Noise:
    """Apply the estimator's window-start rule (see the module table) to one pair's noise."""
    if estimator not in _REDRAWS:
        return noise
    redraw = redraw_due(estimator, resample_every, noise)
    new_xi = noise.xi + fresh if _REDRAWS[estimator] else fresh
    return Noise(
        eps=jnp.where(redraw, fresh, noise.eps),
        xi=jnp.where(redraw, new_xi, noise.xi),
        windows=jnp.where(redraw, 1, noise.windows + 1).astype(jnp.int32),
    )


def pair_gradient(weighted_sum: jax.Array, count: jax.Array, sigma: float) -> jax.Array:
    """``g_j = sum_steps xi (l+ - l-) mask / (2 sigma^2 max(count, 1))``.

    ``weighted_sum``: ``[..., P]``; ``count``: ``[...]`` unmasked steps; returns ``[..., P]``.
    """
    denominator = 2.0 * sigma**2 * jnp.maximum(count, 1).astype(weighted_sum.dtype)
    return weighted_sum / denominator[..., None]


def sign_shaped(grad: jax.Array, loss_diff: jax.Array, sigma: float) -> jax.Array:
    """``[N, P]``: ``grad[j] * 2 sigma / |loss_diff[j]|`` (0 where a pair's twins tie), i.e.
    ``xi_j sign(L+_j - L-_j) / sigma`` (module docstring)."""
    magnitude = jnp.abs(loss_diff)
    tied = magnitude == 0
    factor = jnp.where(tied, 0.0, 2.0 * sigma / jnp.where(tied, 1.0, magnitude))
    return grad * factor[:, None]


def local_totals(outputs: WindowOutputs) -> dict[str, jax.Array]:
    """The sums over this device's pairs that the estimate is built from (see ``finish``)."""
    total = lambda x: jnp.sum(x, axis=0)
    return {
        "num_pairs": total(jnp.ones(outputs.count.shape, jnp.float32)),
        "grad": total(outputs.grad),
        "count": total(outputs.count),
        "loss_sum": total(outputs.loss_sum),
        "loss_diff": total(outputs.loss_diff),
        "loss_diff_squares": total(outputs.loss_diff**2),
        "nonfinite": total(outputs.nonfinite),
        "resets": total(outputs.resets),
    }


def psum_as_one(tree: Any, axis_name: str) -> Any:
    """``lax.psum(tree, axis_name)`` as a single all-reduce of one vector (``ravel_pytree``).

    One collective per outer step, not one per leaf and dtype: every collective is a rendezvous of
    all devices (a network round trip across hosts). Integer leaves (counts) ride in float32,
    exact up to 2**24.
    """
    flat, unravel = ravel_pytree(tree)
    return unravel(jax.lax.psum(flat, axis_name))


def finish(
    totals: dict[str, jax.Array], window: int
) -> tuple[jax.Array, jax.Array, dict[str, jax.Array]]:
    """``(flat_grad [P], meta_loss, diagnostics)`` from the sums over all pairs:
    ``g = sum_j g_j / N``."""
    num_pairs, count = totals["num_pairs"], totals["count"]
    grad = totals["grad"] / num_pairs
    meta_loss = jnp.where(
        count > 0, totals["loss_sum"] / jnp.maximum(count, 1).astype(jnp.float32), jnp.nan
    )
    mean_diff = totals["loss_diff"] / num_pairs
    diff_variance = totals["loss_diff_squares"] / num_pairs - mean_diff**2
    diagnostics = {
        "loss_diff_std": jnp.sqrt(jnp.maximum(diff_variance, 0.0)),
        "masked_fraction": 1.0 - count.astype(jnp.float32) / (num_pairs * window),
        "nonfinite_count": totals["nonfinite"],
        "num_resets": totals["resets"],
    }
    return grad, meta_loss, diagnostics


def combine(
    outputs: WindowOutputs, window: int, axis_name: str | None = None
) -> tuple[jax.Array, jax.Array, dict[str, jax.Array]]:
    """``(flat_grad [P], meta_loss, diagnostics)`` from per-pair outputs: ``g = sum_j g_j / N``.

    With ``axis_name`` the outputs are one device's pairs and the sums (including ``N``) are
    ``psum``-ed over that axis in one collective, so each device returns the global values.
    """
    totals = local_totals(outputs)
    if axis_name is not None:
        totals = psum_as_one(totals, axis_name)
    return finish(totals, window)
