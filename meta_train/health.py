"""Health verdicts of a meta-training run: when to stop it with a reason, when to warn.

The outer step skips an update whose estimate is not finite (theta unchanged) and masks inner
steps whose losses are not finite, so a run can go on for ever without learning anything. The
monitor reads the logged interval means and fails the run (``RunHealthError``) when

- theta is not finite (it is then never saved or exported);
- no usable update was applied for ``MAX_STALLED_STEPS`` consecutive outer steps, or in any step
  of a shorter run: every estimate was skipped (not finite), zero (e.g. ``2 sigma^2`` overflowed),
  or its norm overflowed (clipping then zeroes it);
- every particle diverged (masked fraction 1) for as long.

It warns once each time the skipped or the masked fraction of a log interval rises above its
threshold, and states both in the run's summary line, with a warning when more than
``WARN_RUN_MASKED_FRACTION`` of the run's inner steps were masked. Steps are counted in whole log
intervals: an interval counts as stalled only when every step in it was.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp

MAX_STALLED_STEPS = 20
WARN_SKIPPED_FRACTION = 0.1
WARN_MASKED_FRACTION = 0.5
# Over a whole run, a masked fraction this small already means problems diverge regularly: a
# problem whose loss goes non-finite is reset, so the masked steps undercount the horizon it lost.
WARN_RUN_MASKED_FRACTION = 0.01
STALLED = (
    ": every estimate was non-finite, zero or overflowed; lower estimator.sigma or the learning "
    "rates"
)
DIVERGED = ": every inner loss was non-finite; lower the inner learning rate or the horizon"


class RunHealthError(RuntimeError):
    """The run cannot produce a usable optimizer; the message says why, in one line."""


def is_finite(tree: Any) -> bool:
    """Whether every entry of every leaf is finite (syncs with the device)."""
    return all(bool(jnp.isfinite(leaf).all()) for leaf in jax.tree.leaves(tree))


def nonfinite_theta(step: int, theta: Any) -> str | None:
    """Why the run must stop when ``theta`` is not finite after outer step ``step`` (syncs with
    the device), or ``None``; such a theta is never evaluated, saved or exported."""
    if is_finite(theta):
        return None
    return (
        f"theta is not finite after outer step {step} (not saved or exported); lower "
        "outer.learning_rate or the optimizer's learning rates"
    )


class HealthMonitor:
    """Accumulates the interval means of ``skipped_update`` and ``masked_fraction`` (one call of
    ``observe`` per log step) and decides."""

    def __init__(self, log: Callable[[str], None]):
        self.log = log
        self.steps = 0
        self.skipped = 0.0  # updates skipped (sum of interval means times interval lengths)
        self.masked = 0.0  # masked fraction times steps
        self.stalled_run = 0  # consecutive steps without a usable update
        self.diverged_run = 0  # consecutive steps in which every particle diverged
        self.warned = {"skipped": False, "masked": False}

    def _warn_on_crossing(self, name: str, value: float, threshold: float, step: int) -> None:
        above = value > threshold
        if above and not self.warned[name]:
            self.log(
                f"warning: {name} fraction {value:.2f} above {threshold} at outer step {step} "
                "(non-finite estimates or inner losses: check the learning rates, sigma and "
                "the horizon)"
            )
        self.warned[name] = above

    def observe(self, step: int, scalars: Mapping[str, float], num_steps: int) -> str | None:
        """Record a log interval of ``num_steps`` steps ending at ``step``; return the reason the
        run must stop, or ``None``."""
        skipped, masked = scalars["skipped_update"], scalars["masked_fraction"]
        self.steps += num_steps
        self.skipped += skipped * num_steps
        self.masked += masked * num_steps
        self._warn_on_crossing("skipped", skipped, WARN_SKIPPED_FRACTION, step)
        self._warn_on_crossing("masked", masked, WARN_MASKED_FRACTION, step)
        norm = scalars["estimate_norm"]
        unusable = skipped >= 1.0 or not math.isfinite(norm) or norm == 0.0
        self.stalled_run = self.stalled_run + num_steps if unusable else 0
        self.diverged_run = self.diverged_run + num_steps if masked >= 1.0 else 0
        return self._verdict(step, at_least=MAX_STALLED_STEPS)

    def final_verdict(self, step: int) -> str | None:
        """At the end of a run shorter than ``MAX_STALLED_STEPS``: fail it when it never made a
        usable update, or every particle diverged throughout."""
        return self._verdict(step, at_least=max(self.steps, 1))

    def _verdict(self, step: int, at_least: int) -> str | None:
        if self.stalled_run >= at_least:
            return f"no usable update in the {self.stalled_run} outer steps to step {step}{STALLED}"
        if self.diverged_run >= at_least:
            return (
                f"every particle diverged in the {self.diverged_run} outer steps to step {step}"
                f"{DIVERGED}"
            )
        return None

    def summary(self) -> str:
        """``"skipped updates K of N, masked fraction x"`` over this process's steps."""
        if not self.steps:
            return "no outer steps in this run"
        masked = self.masked / self.steps
        text = f"skipped updates {round(self.skipped)} of {self.steps}, masked fraction "
        text += f"{masked:.3f}"
        if masked > WARN_RUN_MASKED_FRACTION:
            text += (
                f" (WARNING: {masked:.1%} of the inner steps had non-finite losses; a problem that "
                "diverges restarts and loses the rest of its horizon, so the rule was meta-trained "
                "on early training only: lower the inner learning rate or check the task's loss)"
            )
        return text
