"""Learning-rate schedule tuning on the digits MLP (PES paper Fig. 6, ES-Single paper Fig. 6).

theta = (log lr, decay power) of SGD with momentum 0.9 and the inverse-time schedule
``lr_t = lr / (1 + t / 100) ** power`` (``lopt.LearnableSGDM``), inner horizon T = 1000, meta-loss
the mean training loss over the inner problem. TES, PES and ES-Single at K = 1 and K = 10, N pairs
staggered, outer Adam. The reference is a grid search over theta of the same objective (the mean
training loss of a full T-step run, averaged over seeds). Expected: TES drifts to small learning
rates (short-horizon bias); ES-Single settles near the grid optimum; PES with K = 1 fluctuates more.

    python -m benchmarks.paper.lr_schedule [--quick] [--out DIR | --record]
"""

from __future__ import annotations

import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import lopt
from benchmarks.paper import common
from meta_train import unrolled_tasks
from meta_train.es import engine
from meta_train.es.compile_options import FAST_COMPILE
from tasks import registry

NAME = "lr_schedule"
LABELS = {"tes": "TES", "pes": "PES", "es_single": "ES-Single"}


def make_system(quick: bool) -> tuple[unrolled_tasks.TaskTrainingSystem, lopt.LearnableSGDM]:
    overrides = {"hidden": (8,), "batch_size": 32} if quick else {}
    family = registry.get_family("mlp_digits", **overrides)
    optimizer = lopt.LearnableSGDM(
        initial_learning_rate=1e-3,
        momentum=0.9,
        schedule="inverse_time",
        decay_steps=100.0,
        decay_power=0.5,
        learnable=("log_lr", "decay_power"),
    )
    return unrolled_tasks.TaskTrainingSystem(family, optimizer, meta_loss="train"), optimizer


def make_objective(
    system: unrolled_tasks.TaskTrainingSystem,
    horizon: int,
    num_seeds: int,
    compiler_options: dict | None = None,
):
    """``objective(thetas) -> [B]``: the mean training loss of whole ``horizon``-step runs,
    averaged over ``num_seeds`` seeds, for each theta of the batch ``thetas`` (dict of ``[B]``
    arrays); a run with a non-finite loss counts as inf. One jitted function, so batches of one
    size compile once."""

    def one_run(theta, key):
        config_key, init_key, run_key = jax.random.split(key, 3)
        config = system.sample_config(config_key)
        state = system.init_state(theta, init_key, config, jnp.asarray(horizon))

        def body(state, step_key):
            return system.step(theta, state, step_key, config)

        _, losses = jax.lax.scan(body, state, jax.random.split(run_key, horizon))
        return jnp.mean(losses)

    keys = jax.random.split(jax.random.key(1234), num_seeds)
    per_seed = jax.vmap(jax.vmap(one_run, in_axes=(None, 0)), in_axes=(0, None))
    jitted = jax.jit(per_seed, compiler_options=compiler_options)

    def objective(thetas: dict) -> np.ndarray:
        losses = np.asarray(jitted(thetas, keys))
        return np.where(np.isfinite(losses), losses, np.inf).mean(axis=1)

    return objective


def main(argv: list[str] | None = None) -> int:
    parse = common.parser(__doc__.splitlines()[0])
    parse.add_argument("--horizon", type=int, default=1000, help="T")
    parse.add_argument("--inner-steps", type=int, default=6000, help="per twin and pair")
    # --outer-lr is the lr at K = 10; a run with window K uses lr * K / 10, so every run may move
    # theta alike per inner step (Adam's step size hardly depends on the gradient's scale).
    common.add_scale_arguments(parse, pairs=8, seeds=3, sigma=0.1, outer_lr=0.03)
    parse.add_argument(
        "--clip", type=float, default=1.0, help="clip estimates to this global norm (0: off)"
    )
    common.add_estimators_argument(parse, tuple(LABELS))
    args = common.parse_args(parse, argv)
    quick = args.quick
    horizon, pairs, inner_steps, num_seeds = args.horizon, args.pairs, args.inner_steps, args.seeds
    runs = [(e, k) for k in (1, 10) for e in common.selected(args, tuple(LABELS))]
    log_lrs, powers, grid_seeds = np.linspace(np.log(1e-3), np.log(1.0), 8), np.linspace(0, 2, 5), 2
    if quick:
        horizon, pairs, inner_steps, num_seeds = 8, 2, 8, 1
        runs = [("es_single", 2)]
        log_lrs, powers, grid_seeds = np.log([1e-1]), np.array([0.5]), 1
    system, optimizer = make_system(quick)
    theta0 = optimizer.init_meta_params(jax.random.key(0))

    start = time.perf_counter()
    mesh = np.stack(np.meshgrid(log_lrs, powers, indexing="ij"), -1).reshape(-1, 2)
    grid_thetas = {"log_lr": jnp.asarray(mesh[:, 0]), "decay_power": jnp.asarray(mesh[:, 1])}
    options = FAST_COMPILE if quick else None
    objective_of = make_objective(system, horizon, grid_seeds, options)
    grid = objective_of(grid_thetas).reshape(len(log_lrs), -1)
    best = np.unravel_index(np.argmin(grid), grid.shape)
    best_theta = (float(log_lrs[best[0]]), float(powers[best[1]]))
    print(
        f"grid ({grid.size} points, {grid_seeds} seeds, {time.perf_counter() - start:.0f} s): best "
        f"lr = {np.exp(best_theta[0]):.3g}, power = {best_theta[1]:.2f}, objective {grid.min():.4f}"
    )

    results = {}
    for estimator, window in runs:
        outer_optimizer = optax.adam(args.outer_lr * window / 10)
        if args.clip > 0:
            outer_optimizer = optax.chain(optax.clip_by_global_norm(args.clip), outer_optimizer)
        label = f"{LABELS[estimator]} K={window}"
        config = engine.EngineConfig(
            num_pairs=pairs,
            window=window,
            sigma=args.sigma,
            horizon=horizon,
            stagger=True,
            estimator=estimator,
        )
        num_steps = max(1, inner_steps // window)
        run = common.run_outer(
            system,
            config,
            theta0,
            outer_optimizer,
            num_steps,
            jax.random.split(jax.random.key(7), num_seeds),
            chunk=min(num_steps, 500),
            compiler_options=options,
        )
        tail = run.theta[:, -max(1, num_steps // 10) :]
        final = tail.mean(axis=1)  # [seeds, 2]: mean over the last 10% of outer steps
        # ravel_pytree orders dict keys alphabetically: (decay_power, log_lr).
        final_thetas = {"log_lr": jnp.asarray(final[:, 1]), "decay_power": jnp.asarray(final[:, 0])}
        objective = objective_of(final_thetas)
        result_std = tail[..., 1].std(axis=1)
        thinned, every = common.thin(np.moveaxis(run.theta, -1, 0))
        thinned = np.moveaxis(thinned, 0, -1)  # [seeds, thinned steps, (decay_power, log_lr)]
        results[label] = {
            "estimator": estimator,
            "window": window,
            "outer_steps": num_steps,
            "outer_learning_rate": args.outer_lr * window / 10,
            "trajectory_every": every,
            "trajectory_log_lr": thinned[..., 1],
            "trajectory_decay_power": thinned[..., 0],
            "meta_loss": common.thin(run.meta_loss)[0],
            "final_log_lr": final[:, 1],
            "final_decay_power": final[:, 0],
            "final_objective": objective,
            "tail_std_log_lr": result_std,
            "burn_in_steps": run.burn_in,
            "seconds": run.seconds,
        }
        print(
            f"  {label:14s} {num_steps:6d} outer steps: final lr "
            f"{np.array2string(np.exp(final[:, 1]), precision=3)}, power "
            f"{np.array2string(final[:, 0], precision=2)}, objective "
            f"{np.array2string(objective, precision=4)} (grid best {grid.min():.4f}); "
            f"std of log lr over the last 10%: {np.array2string(result_std, precision=3)}"
        )

    payload = {
        "experiment": NAME,
        "horizon": horizon,
        "num_pairs": pairs,
        "sigma": args.sigma,
        "outer": f"adam({args.outer_lr} * K / 10)"
        + (f" after clip({args.clip})" if args.clip > 0 else ""),
        "inner_steps_per_particle": inner_steps,
        "num_seeds": num_seeds,
        "theta_0": {"log_lr": float(np.log(1e-3)), "decay_power": 0.5},
        "grid": {"log_lr": log_lrs, "decay_power": powers, "objective": grid, "seeds": grid_seeds},
        "grid_best": {
            "log_lr": best_theta[0],
            "decay_power": best_theta[1],
            "objective": grid.min(),
        },
        "quick": quick,
        "runs": results,
    }
    path = common.write_json(args.out, NAME, payload, ("runs",), args.estimators is not None)
    print("wrote", path)
    fig, (landscape, curves) = common.figure(2, width=5.5, height=4.5)
    if grid.shape[1] > 1:
        shown = np.log10(np.minimum(grid, np.nanmax(grid[np.isfinite(grid)])))
        contour = landscape.contourf(powers, np.log10(np.exp(log_lrs)), shown, levels=20)
        fig.colorbar(contour, ax=landscape, label="log10 grid objective")
    landscape.plot(best_theta[1], np.log10(np.exp(best_theta[0])), "r*", ms=14, label="grid best")
    for label, result in common.read_json(path)["runs"].items():
        log_lr = np.asarray(result["trajectory_log_lr"])[0]  # seed 0
        power = np.asarray(result["trajectory_decay_power"])[0]
        (line,) = landscape.plot(power, np.log10(np.exp(log_lr)), lw=1, label=label)
        steps = np.arange(len(log_lr)) * result["trajectory_every"]
        curves.plot(steps, np.exp(log_lr), color=line.get_color(), label=label)
    landscape.set(xlabel="decay power", ylabel="log10 initial lr")
    landscape.legend(fontsize=6)
    curves.set(xlabel="outer step", ylabel="initial lr (seed 0)", yscale="log")
    curves.legend(fontsize=6)
    print("wrote", common.save_figure(fig, args.out, NAME))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
