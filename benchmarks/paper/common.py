"""Shared plumbing of the paper experiments: arguments, the outer loop on the engine, output files.

Every experiment is ``main(argv) -> int`` with ``--quick`` (seconds, for the test suite) and a full
mode, and writes ``<out>/<name>.json`` and ``<out>/<name>.png``: ``<out>`` is ``--out``, or
``benchmarks/results/paper`` with ``--record``, else a scratch folder (``benchmarks/output.py``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.flatten_util import ravel_pytree

from benchmarks import output
from benchmarks.provenance import ROOT, provenance
from meta_train.es import engine
from meta_train.es.system import UnrolledSystem

OUT = "paper"  # under benchmarks/results/ (with --record) or the scratch folder


def parser(description: str) -> argparse.ArgumentParser:
    """An argument parser with the options every experiment shares."""
    parse = argparse.ArgumentParser(description=description)
    parse.add_argument("--quick", action="store_true", help="a seconds-long smoke run")
    output.add_arguments(parse)
    return parse


def parse_args(parse: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """``parse``'s arguments, ``out`` resolved to the folder this run writes to."""
    args = parse.parse_args(argv)
    args.out = output.resolve(args, OUT)
    return args


def add_scale_arguments(
    parse: argparse.ArgumentParser, *, pairs: int, seeds: int, sigma: float, outer_lr: float
) -> None:
    """The scale options every engine experiment takes; defaults are the reported runs'."""
    parse.add_argument("--pairs", type=int, default=pairs, help="N antithetic pairs")
    parse.add_argument("--seeds", type=int, default=seeds, help="meta-training seeds")
    parse.add_argument("--sigma", type=float, default=sigma, help="perturbation scale")
    parse.add_argument("--outer-lr", type=float, default=outer_lr, help="outer Adam lr")


def add_estimators_argument(parse: argparse.ArgumentParser, choices: tuple[str, ...]) -> None:
    """``--estimators a,b``: rerun only these; the JSON at ``--out`` keeps the others' runs."""
    parse.add_argument(
        "--estimators",
        type=lambda text: tuple(text.split(",")),
        default=None,
        help=f"comma-separated subset of {','.join(choices)} to rerun; the other estimators' runs "
        "are kept from the JSON already in --out (same settings required), each with the "
        "provenance of the run that made it",
    )


def selected(args: argparse.Namespace, choices: tuple[str, ...]) -> tuple[str, ...]:
    """The estimators to run: ``--estimators`` (checked against ``choices``) or all."""
    if args.estimators is None:
        return choices
    unknown = sorted(set(args.estimators) - set(choices))
    if unknown:
        raise SystemExit(f"--estimators: unknown {unknown}; choose from {choices}")
    return tuple(e for e in choices if e in args.estimators)


# Keys of a payload that describe who made which run, not the experiment's settings.
_BOOKKEEPING = ("provenance", "run_provenance", "superseded")


def write_json(
    out: str,
    name: str,
    payload: dict[str, Any],
    sections: tuple[str, ...] = (),
    partial: bool = False,
) -> str:
    """Write ``payload`` with provenance to ``<out>/<name>.json`` and return the path.

    ``sections``: the payload's keys that map run labels to results. Every label gets a
    ``run_provenance`` entry. With ``partial`` (a rerun of some estimators) the labels missing
    from the new sections are kept from the JSON already there, which must have the same
    settings, and each replaced run is kept under ``superseded`` (the first time it is replaced).
    """
    os.makedirs(out, exist_ok=True)
    path = os.path.join(out, f"{name}.json")
    payload = json.loads(json.dumps(payload, default=_jsonable))
    now = provenance(sys.argv)
    payload["provenance"] = now
    labels = {label for section in sections for label in payload[section]}
    payload["run_provenance"] = {label: now for label in sorted(labels)}
    if partial:
        payload = _merge_with_previous(path, payload, sections)
    with open(path, "w") as file:
        json.dump(payload, file, indent=1)
    return path


def read_json(path: str) -> dict[str, Any]:
    """The payload at ``path`` (figures are drawn from it, so a partial rerun's figure shows
    every run the JSON holds)."""
    with open(path) as file:
        return json.load(file)


def _merge_with_previous(path: str, payload: dict, sections: tuple[str, ...]) -> dict:
    if not os.path.exists(path):
        raise SystemExit(f"--estimators merges into {path}, which does not exist; run all first")
    with open(path) as file:
        old = json.load(file)
    settings = lambda p: {k: v for k, v in p.items() if k not in (*sections, *_BOOKKEEPING)}
    if settings(old) != settings(payload):
        keys = settings(old) | settings(payload)
        differ = sorted(k for k in keys if old.get(k) != payload.get(k))
        raise SystemExit(
            f"{path} was made with other settings ({differ}); rerun every estimator instead"
        )
    old_provenance = old.get("run_provenance") or {}
    unrecorded = {
        "commit": _last_commit_of(path),
        "note": "run before provenance was recorded: the last commit that changed this JSON",
    }
    superseded = old.get("superseded", {})
    merged = dict(payload, superseded=superseded)
    replaced = {label for section in sections for label in payload[section]}
    for section in sections:
        merged[section] = {**old[section], **payload[section]}
    for label in sorted({label for section in sections for label in old[section]}):
        previous = old_provenance.get(label, unrecorded)
        if label in replaced:
            superseded.setdefault(
                label,
                {"run_provenance": previous}
                | {section: old[section][label] for section in sections if label in old[section]},
            )
        else:
            merged["run_provenance"][label] = previous
    return merged


def _last_commit_of(path: str) -> str | None:
    try:
        result = subprocess.run(
            ["git", "log", "-1", "--format=%H", "--", os.path.abspath(path)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip() or None


def thin(curves: Any, max_points: int = 500) -> tuple[np.ndarray, int]:
    """``(curves[..., ::every], every)``: per-step curves subsampled along their last axis to at
    most about ``max_points`` points, to keep the JSON small (the figures use the full curves)."""
    curves = np.asarray(curves)
    every = max(1, -(-curves.shape[-1] // max_points))
    return curves[..., ::every], every


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.ndarray | jax.Array):
        return np.asarray(value).tolist()
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"cannot write {type(value).__name__} to JSON")


def figure(num_panels: int, width: float = 4.5, height: float = 3.5):
    """A row of ``num_panels`` matplotlib axes on a headless backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, num_panels, figsize=(width * num_panels, height), squeeze=False)
    return fig, axes[0]


def save_figure(fig, out: str, name: str) -> str:
    """Save ``fig`` to ``<out>/<name>.png``, close it and return the path."""
    import matplotlib.pyplot as plt

    os.makedirs(out, exist_ok=True)
    path = os.path.join(out, f"{name}.png")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


class OuterRun(NamedTuple):
    """Meta-training trajectories of ``S`` seeds: ``theta [S, steps+1, P]`` (flat, including the
    start), ``meta_loss [S, steps]``, ``grad [S, steps, P]`` the estimates, ``burn_in [S]`` inner
    steps of staggering, ``seconds`` wall time of the outer loop after its first (compiling) chunk.
    """

    theta: np.ndarray
    meta_loss: np.ndarray
    grad: np.ndarray
    burn_in: np.ndarray
    seconds: float


def run_outer(
    system: UnrolledSystem,
    config: engine.EngineConfig,
    theta: Any,
    outer_optimizer: optax.GradientTransformation,
    num_steps: int,
    keys: jax.Array,
    chunk: int = 100,
    callback: Callable[[int, np.ndarray, np.ndarray], None] | None = None,
    compiler_options: dict[str, Any] | None = None,
) -> OuterRun:
    """Meta-train ``theta`` for ``num_steps`` outer steps from each of the ``S`` seeds ``keys``
    (``[S]`` keys): ``engine.window_step`` then ``outer_optimizer``, the seeds ``vmap``ped (one
    compile for all of them), ``chunk`` outer steps ``lax.scan``ned per jitted call.

    ``callback(steps_done, flat_theta [S, P], meta_loss [S])`` runs after each chunk (e.g. a
    progress line). ``compiler_options`` go to XLA
    (``meta_train.es.compile_options.FAST_COMPILE`` for smoke runs).
    """
    flat_theta = ravel_pytree(theta)[0]
    inits = [engine.init_particles(system, config, theta, key) for key in keys]
    particles = jax.tree.map(lambda *xs: jnp.stack(xs), *[p for p, _ in inits])
    seeds = len(inits)
    broadcast = lambda tree: jax.tree.map(
        lambda x: jnp.broadcast_to(x, (seeds, *jnp.shape(x))), tree
    )
    chunk = max(1, min(chunk, num_steps))
    run_chunk = chunk_runner(system, config, outer_optimizer, chunk, compiler_options)
    carry = (broadcast(theta), broadcast(outer_optimizer.init(theta)), particles)
    thetas = [np.broadcast_to(np.asarray(flat_theta), (seeds, 1, flat_theta.size))]
    losses, grads = [], []
    start, done = None, 0
    while done < num_steps:
        carry, (chunk_theta, chunk_loss, chunk_grad) = run_chunk(carry)
        if start is None:
            jax.block_until_ready(carry)
            start = time.perf_counter()
        take = min(chunk, num_steps - done)
        thetas.append(np.asarray(chunk_theta)[:, :take])
        losses.append(np.asarray(chunk_loss)[:, :take])
        grads.append(np.asarray(chunk_grad)[:, :take])
        done += take
        if callback is not None:
            callback(done, thetas[-1][:, -1], losses[-1][:, -1])
    return OuterRun(
        theta=np.concatenate(thetas, axis=1),
        meta_loss=np.concatenate(losses, axis=1),
        grad=np.concatenate(grads, axis=1),
        burn_in=np.asarray([steps for _, steps in inits]),
        seconds=time.perf_counter() - start,
    )


def chunk_runner(
    system: UnrolledSystem,
    config: engine.EngineConfig,
    outer_optimizer: optax.GradientTransformation,
    chunk: int,
    compiler_options: dict[str, Any] | None = None,
) -> Callable:
    """A jitted ``carry -> (carry, (flat_theta, meta_loss, flat_grad))`` running ``chunk`` outer
    steps of every seed; ``carry = (theta, outer_state, particles)`` with a leading seed axis."""

    def run_seed(carry):
        def body(carry, _):
            theta, outer_state, particles = carry
            particles, estimate = engine.window_step(system, config, theta, particles)
            updates, outer_state = outer_optimizer.update(estimate.grad, outer_state, theta)
            theta = optax.apply_updates(theta, updates)
            record = (ravel_pytree(theta)[0], estimate.meta_loss, ravel_pytree(estimate.grad)[0])
            return (theta, outer_state, particles), record

        return jax.lax.scan(body, carry, None, length=chunk)

    return jax.jit(jax.vmap(run_seed), compiler_options=compiler_options)


def median_band(curves: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(median, 25th, 75th percentile)`` over axis 0 of ``[seeds, steps]`` curves."""
    return tuple(np.nanpercentile(curves, q, axis=0) for q in (50, 25, 75))
