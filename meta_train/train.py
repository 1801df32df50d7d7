"""Meta-training: the outer loop behind ``lopt meta-train``.

``meta_train(config, workdir)`` reads top to bottom: build the learned optimizer and the task
groups (one per static task configuration, each with its own particles), restore the meta-training
state from the workdir's latest checkpoint or initialise it (staggered particles burnt in under the
initial theta), compile the outer step once (``meta_train.outer``: one jitted, buffer-donating call
over all local devices), then loop: outer step, metrics, periodic held-out evaluation, checkpoint,
export. At the end (or on SIGINT/SIGTERM, after the step in flight) it saves a checkpoint and the
exported optimizer; a completed run also plots its curves and compares the result with Adam on a
few held-out tasks.

What it writes in the workdir is named in ``meta_train.layout``.

Several hosts: run the same command with the same config and workdir (a shared file system) in
every process, with ``--distributed``, which calls ``jax.distributed.initialize()`` before anything
else touches jax (``--coordinator-address``, ``--num-processes`` and ``--process-id``, or detected
from the cluster's environment). The mesh then holds every process's devices, the particles are
split over all of them, and the engine's ``psum`` spans the hosts; every process computes the same
theta, and process 0 writes the logs and the export.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import signal
import sys
import time
from collections.abc import Iterator
from typing import Any, NamedTuple

import jax
import ml_collections
import numpy as np
from jax.experimental import multihost_utils

import lopt
from meta_train import (
    checkpoint,
    chrono,
    config_flags,
    health,
    layout,
    metrics,
    outer,
    verdict,
    warm_start,
)
from meta_train.evaluation import held_out
from tasks import registry

# --- Building the groups of the settings.


def build_groups(settings: config_flags.Settings) -> list[outer.TaskGroup]:
    """One ``TaskGroup`` per group of ``settings`` (``config_flags.validate``), in the config's
    order: its family built (which loads the data), augmented, in the settings' system."""
    groups = []
    for group in settings.groups:
        try:
            family = registry.get_family(group.family, **group.overrides)
        except (TypeError, ValueError) as error:
            raise config_flags.ConfigError(
                f"config key 'groups.{group.name}.overrides': {error}"
            ) from None
        if group.augmentation is not None:
            family = group.augmentation.replace(base=family)
        system = settings.system.replace(family=family)
        groups.append(outer.TaskGroup(group.name, system, group.engine, group.weight))
    return groups


def export_metadata(
    config: ml_collections.ConfigDict, step: int, groups: list[outer.TaskGroup]
) -> dict[str, Any]:
    """What ``lopt.save`` records next to theta; ``num_steps`` is the horizon ``lopt.load`` uses."""
    return {
        "num_steps": config.estimator.horizon,
        "meta_training_steps": step,
        "estimator": config.estimator.name,
        "families": {g.name: config.groups[g.name].family for g in groups},
        "config": config_flags.canonical(config),
    }


class _StopSignals:
    """Within the block, SIGINT and SIGTERM ask the loop to stop after the step in flight (a second
    one stops at once); ``signum`` is the first signal received, or 0."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.signum = 0
        self.previous = {}

    def _handle(self, signum, frame):
        if self.signum:
            signal.signal(signum, self.previous[signum])
            signal.raise_signal(signum)
        self.signum = signum

    def __enter__(self):
        self.previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        return self

    def __exit__(self, *exc_info):
        for s, handler in self.previous.items():
            signal.signal(s, handler)


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _one_line(error: OSError) -> str:
    """An ``OSError`` as one line: its message and the file it names, if any."""
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return (
        f"{text} ({error.filename})" if error.filename and str(error.filename) not in text else text
    )


def _compare_with_adam(
    config: ml_collections.ConfigDict,
    settings: config_flags.Settings,
    theta: Any,
    workdir: str,
) -> tuple[dict[str, Any], Any]:
    """Train a few held-out tasks of ``config_flags.comparison_suite`` with the meta-trained
    optimizer of ``settings``, the untrained one and Adam at each of
    ``config.comparison.adam_learning_rates`` (``meta_train.evaluation.evaluate``); write the
    report to ``layout.COMPARISON_DIR``; return the final training losses (mean over seeds) and
    the report."""
    from meta_train.evaluation import evaluate

    section = config.comparison
    tasks = registry.get_suite(config_flags.comparison_suite(config), section.num_tasks)
    report = evaluate.evaluate(
        settings.optimizer,
        tasks,
        theta=jax.device_get(theta),
        num_steps=section.num_steps or None,
        seeds=section.seeds,
        baselines=("adam",),
        adam_grid=tuple(section.adam_learning_rates),
        step_size=settings.step_size,
        baseline_schedule=evaluate.schedule_of(settings.step_size),
        untrained_floor=True,
        name=verdict.SUBJECT,
        progress=config.progress,
        settings={"source": "end of lopt meta-train"},
    )
    out_dir = os.path.join(workdir, layout.COMPARISON_DIR)
    report.save(out_dir)
    table = {}
    for task in report.tasks:
        row = {}
        for label, run in task.runs.items():
            if label == "adam":
                for point in run.grid:
                    row[f"adam_lr{point.learning_rate:g}"] = point.train_loss
            else:
                row[label] = float(np.mean(run.train.metrics["train_loss"]))
        table[f"{task.task} ({task.num_steps} steps)"] = row
    with open(os.path.join(out_dir, layout.COMPARISON_SUMMARY_FILE), "w") as f:
        json.dump(table, f, indent=2)
    return table, report


# --- The run.


def _restore_or_init(
    groups: list[outer.TaskGroup],
    theta: Any,
    settings: outer.OuterSettings,
    mesh: Any,
    checkpointer: checkpoint.Checkpointer,
    particles_key: jax.Array,
) -> tuple[outer.MetaState, int, list[int]]:
    """``(state, start_step, burn_in_steps)``: the newest checkpoint that restores and verifies,
    or a fresh state whose staggered particles are burnt in under the initial theta."""
    if checkpointer.latest_step():
        abstract = outer.abstract_meta_state(groups, theta, settings, mesh)
        restored = checkpointer.restore_latest(abstract, _log)
        if restored:
            start_step, state, meta = restored
            _log(f"resuming at outer step {start_step}")
            return state, start_step, meta["burn_in_steps"]
    start = time.perf_counter()
    state, burn_in_steps = outer.init_meta_state(groups, theta, settings, particles_key, mesh)
    jax.block_until_ready(state)
    _log(
        f"burn-in: {burn_in_steps} sequential inner steps per group "
        f"({time.perf_counter() - start:.1f}s, compile included)"
    )
    return state, 0, burn_in_steps


@contextlib.contextmanager
def _closed_on_failure(
    writer: metrics.MetricWriter, checkpointer: checkpoint.Checkpointer
) -> Iterator[None]:
    """A failure in the block (a full disk, say) must end in the caller's one line: the writers
    are closed as far as they can be, and their own retries (tensorboardX at exit) kept quiet."""
    try:
        yield
    except BaseException:
        writer.abort()
        with contextlib.suppress(Exception):
            checkpointer.close()
        raise


def _due(step: int, every: int) -> bool:
    return step % every == 0


def _export(
    path: str,
    optimizer: lopt.LearnedOptimizer,
    theta: Any,
    metadata: dict,
    step_size: lopt.StepSize | None,
) -> None:
    """``lopt.save``, refused up front when the disk cannot hold it (``checkpoint.ensure_space``),
    its orbax failures one ``OSError``."""
    what = f"the export of step {metadata['meta_training_steps']} to {path}"
    checkpoint.ensure_space(os.path.dirname(path), checkpoint.save_margin(path, theta), what)
    with checkpoint.orbax_write(what):
        lopt.save(path, optimizer, theta, metadata, step_size)


class _Saver(NamedTuple):
    """Saves a step: the checkpoint of the whole state (every process writes its shards) and, on
    the chief, the exported optimizer."""

    config: ml_collections.ConfigDict
    workdir: str
    settings: config_flags.Settings
    groups: list[outer.TaskGroup]
    checkpointer: checkpoint.Checkpointer
    meta: dict[str, Any]  # the checkpoint's metadata besides its step
    chief: bool

    def __call__(
        self, step: int, state: outer.MetaState, *, checkpoint: bool = True, export: bool = True
    ) -> None:
        if checkpoint:
            self.checkpointer.save(step, state, {"step": step} | self.meta)
        if export and self.chief:
            theta = jax.device_get(outer.theta_to_export(self.settings.outer, state))
            metadata = export_metadata(self.config, step, self.groups)
            path = os.path.join(self.workdir, layout.EXPORT_DIR)
            _export(path, self.settings.optimizer, theta, metadata, self.settings.step_size)


def _log_scalars(
    accumulated: metrics.OuterMetrics,
    group_losses: dict[str, jax.Array],
    timer: chrono.Chrono,
    steps_per_call: int,
) -> tuple[dict[str, float], chrono.Lap]:
    """A log step's scalars: the metrics accumulated since the last one, the inner steps per
    second of the lap and, with several groups, each group's meta-loss; and the lap. Reading
    the metrics waits for the step, so the lap ends after it."""
    scalars = {k: float(v) for k, v in accumulated.compute().items()}
    lap = timer.lap()
    scalars["particle_steps_per_s"] = steps_per_call * lap.steps / lap.seconds
    if len(group_losses) > 1:
        scalars |= {f"group/{n}/meta_loss": float(v) for n, v in group_losses.items()}
    return scalars, lap


def _record_start(
    writer: metrics.MetricWriter, config: ml_collections.ConfigDict, theta: Any
) -> None:
    """What a fresh run records once: theta's parameter overview (logged too) and the config."""
    from clu import parameter_overview

    overview = parameter_overview.get_parameter_overview(jax.device_get(theta))
    writer.write_text(0, layout.PARAMETER_OVERVIEW, overview)
    writer.write_config(config_flags.canonical(config))
    _log(overview)


def _evaluate(
    evals: list, theta: Any, step: int, writer: metrics.MetricWriter, watch: metrics.HeldOutWatch
) -> dict[str, float]:
    """The held-out figures of ``theta``, recorded; the watch's warning, if any, is logged."""
    scalars = held_out.run_held_out_evals(evals, theta)
    writer.write_scalars(step, scalars)
    warning = watch.add_eval(step, scalars)
    if warning:
        _log(warning)
        writer.write_warning(step, warning)
    return scalars


def _mean_meta_loss(rows: list[dict], first: bool) -> float | None:
    """Mean logged meta-loss over the first (or last) tenth of the run's log rows."""
    values = [row["meta_loss"] for row in rows if row.get("meta_loss") is not None]
    if not values:
        return None
    count = max(1, len(values) // 10)
    return float(np.mean(values[:count] if first else values[-count:]))


def _finish(
    config: ml_collections.ConfigDict,
    workdir: str,
    settings: config_flags.Settings,
    summary: dict[str, Any],
    health_summary: str,
    jsonl_path: str | None,
) -> dict[str, Any]:
    """The end of a run: ``summary`` with the meta-loss of the first and last tenth of the logged
    rows (``jsonl_path``: the chief's log, else ``None``); a completed run's curves PNG and
    comparison with Adam (the chief's); the verdict block and the closing log line."""
    rows = metrics.read_jsonl(jsonl_path) if jsonl_path else []
    start, end = _mean_meta_loss(rows, first=True), _mean_meta_loss(rows, first=False)
    summary |= {"meta_loss_start": start, "meta_loss_end": end}
    report = None
    if jsonl_path and not summary["interrupted"]:
        eval_steps = f"{config.eval.num_steps} inner steps" if config.eval.num_steps else None
        metrics.plot_curves(
            jsonl_path,
            os.path.join(workdir, layout.CURVES_FILE),
            title=f"{config.estimator.name}, {config.optimizer.architecture} optimizer",
            eval_label=f"during meta-training: suite {config.eval.suite!r}, "
            f"after {eval_steps or 'each task horizon'}",
        )
        if config.comparison.num_tasks:
            table, report = _compare_with_adam(config, settings, summary["theta"], workdir)
            summary["comparison"] = table
    if jsonl_path:
        trend = verdict.meta_loss_trend([row.get("meta_loss") for row in rows])
        summary["meta_loss_change"] = trend.change if trend else None
        suite = config_flags.comparison_suite(config)
        _log(verdict.verdict(trend, report, suite, summary["step"]))
    if start is not None:
        _log(f"{health_summary}; outputs in {workdir}")
    return summary


def meta_train(
    config: ml_collections.ConfigDict, workdir: str, *, overwrite: bool = False
) -> dict[str, Any]:
    """Meta-train as ``config`` says, in ``workdir`` (resuming the run there, if any).

    Returns a summary: ``step``, ``theta`` (host arrays), ``interrupted`` (the signal's name or
    ``None``), ``burn_in_steps``, ``compile_seconds``, ``particle_steps_per_s`` (last log
    interval), ``meta_loss_start`` / ``meta_loss_end`` (mean logged meta-loss over the first and
    last tenth of the whole run), ``skipped_updates`` / ``masked_fraction`` (this process's steps),
    ``eval`` (the last held-out figures) and ``comparison`` (the held-out comparison with Adam,
    when it ran).

    Raises ``ConfigError`` or ``checkpoint.WorkdirError`` (another process holds the workdir, it
    is not lopt's, its config differs) before anything is written or compiled, and
    ``health.RunHealthError`` when the run stops because it cannot produce a usable optimizer.
    """
    # Everything that can be wrong with the config or the workdir fails here, before any compile.
    settings = config_flags.validate(config, jax.device_count())
    warning = config_flags.cost_warning(config)
    if warning:
        _log(warning)
    chief = jax.process_index() == 0  # the process that writes logs, exports and reports
    if chief:
        checkpoint.check_workdir(workdir, config, overwrite)
        checkpoint.check_writable(workdir)
    groups = build_groups(settings)
    lock = checkpoint.WorkdirLock(workdir)
    if chief:
        lock.acquire()
    try:
        if chief:
            removed = checkpoint.prepare_workdir(workdir, config, overwrite)
            if removed:
                _log(f"--overwrite removed what lopt wrote in {workdir}: {', '.join(removed)}")
        return _meta_train(config, workdir, settings, groups, chief)
    except OSError as error:
        if error.errno not in checkpoint.WRITE_ERRNOS:
            raise
        saved = checkpoint.latest_saved_step(workdir)
        resume = (
            f"the last saved checkpoint is outer step {saved}; once the workdir is writable, "
            "rerun the same command to resume from it"
            if saved
            else "no checkpoint was saved yet; once the workdir is writable, rerun the same command"
        )
        raise checkpoint.RunWriteError(f"a write failed: {_one_line(error)}; {resume}") from error
    finally:
        lock.release()


def _meta_train(
    config: ml_collections.ConfigDict,
    workdir: str,
    settings: config_flags.Settings,
    groups: list[outer.TaskGroup],
    chief: bool,
) -> dict[str, Any]:
    """``meta_train`` in a checked and locked workdir, with the config's ``settings``."""
    from tqdm.auto import tqdm

    if jax.process_count() > 1:
        multihost_utils.sync_global_devices("lopt meta-train: workdir ready")
    optimizer = settings.optimizer
    mesh = outer.make_mesh(settings.num_devices)
    checkpointer = checkpoint.Checkpointer(workdir, config.keep_checkpoints)
    theta_key, particles_key = jax.random.split(jax.random.key(config.seed))
    theta = optimizer.init_meta_params(theta_key)
    if config.init_from:
        theta, fresh = warm_start.warm_start(config.init_from, optimizer, theta)
        kept = f"; {', '.join(fresh)} at their initial values" if fresh else ""
        _log(f"theta from {config.init_from}{kept} (a resumed run continues its checkpoint)")
    state, start_step, burn_in_steps = _restore_or_init(
        groups, theta, settings.outer, mesh, checkpointer, particles_key
    )
    meta = {"burn_in_steps": burn_in_steps, "num_devices": mesh.size}
    meta["config"] = config_flags.canonical(config)
    save = _Saver(config, workdir, settings, groups, checkpointer, meta, chief)
    exported = functools.partial(outer.theta_to_export, settings.outer)
    writer = metrics.MetricWriter(workdir, resume_step=start_step, active=chief)
    with _closed_on_failure(writer, checkpointer):
        if not start_step:
            _record_start(writer, config, state.theta)

        outer_step = outer.OuterStep(groups, settings.outer, mesh)
        compile_seconds = outer_step.compile(state)
        steps_per_call = outer.inner_steps_per_outer_step(groups)
        compiled = f"compiled in {compile_seconds:.1f}s" if compile_seconds else "reused (compiled)"
        _log(f"outer step {compiled} on {mesh.size} device(s); {steps_per_call} inner steps each")
        evals = []
        if config.eval.num_tasks:
            evals = held_out.make_held_out_evals(
                optimizer,
                config.eval.suite,
                config.eval.num_tasks,
                config.eval.num_steps,
                step_size=settings.step_size,
            )
        last_eval, watch = {}, metrics.HeldOutWatch()
        if evals and not start_step:
            last_eval = _evaluate(evals, exported(state), 0, writer, watch)

        # The loop. Work is dispatched asynchronously; reading the metrics at a log step syncs.
        # The throughput counts outer-step time only: evaluations, checkpoints and exports are
        # paused out.
        monitor, failure, accumulated = health.HealthMonitor(_log), None, None
        step, throughput, timer = start_step, float("nan"), chrono.Chrono()
        quiet = not (config.progress and chief)
        bar = tqdm(total=config.num_outer_steps, initial=start_step, disable=quiet, unit="step")
        with _StopSignals() as stop:
            while step < config.num_outer_steps and not stop.signum:
                state, step_metrics, group_losses = outer_step(state)
                accumulated = (
                    step_metrics if accumulated is None else accumulated.merge(step_metrics)
                )
                step += 1
                timer.tick()
                bar.update()
                logged = (
                    _due(step, config.log_every) or step == config.num_outer_steps or stop.signum
                )
                if logged:
                    scalars, lap = _log_scalars(accumulated, group_losses, timer, steps_per_call)
                    accumulated, throughput = None, scalars["particle_steps_per_s"]
                    writer.write_scalars(step, scalars)
                    watch.add_meta_loss(scalars["meta_loss"])
                    bar.set_postfix(meta_loss=f"{scalars['meta_loss']:.4g}")
                    failure = monitor.observe(step, scalars, lap.steps)
                evaluate_now = evals and _due(step, config.eval.every)
                checkpoint_now = _due(step, config.checkpoint_every)
                export_now = _due(step, config.export_every)
                if failure is None and (logged or evaluate_now or checkpoint_now or export_now):
                    failure = health.nonfinite_theta(step, state.theta)  # reading theta syncs
                if failure:
                    break
                if evaluate_now or checkpoint_now or export_now:
                    with timer.paused(state):
                        if evaluate_now:
                            last_eval = _evaluate(evals, exported(state), step, writer, watch)
                        save(step, state, checkpoint=checkpoint_now, export=export_now)
            bar.close()
            failure = (
                failure or monitor.final_verdict(step) or health.nonfinite_theta(step, state.theta)
            )
            if failure is None:
                save(step, state)
        checkpointer.close()
        writer.close()
    if failure:
        raise health.RunHealthError(f"{failure} ({monitor.summary()})")
    interrupted = signal.Signals(stop.signum).name if stop.signum else None
    if interrupted:
        _log(f"{interrupted}: saved the checkpoint and export of outer step {step}")

    summary = {
        "step": step,
        "theta": jax.device_get(exported(state)),
        "interrupted": interrupted,
        "burn_in_steps": burn_in_steps,
        "compile_seconds": compile_seconds,
        "particle_steps_per_s": throughput,
        "skipped_updates": monitor.skipped,
        "masked_fraction": monitor.masked / max(monitor.steps, 1),
        "eval": last_eval,
    }
    jsonl_path = writer.jsonl_path if chief else None
    return _finish(config, workdir, settings, summary, monitor.summary(), jsonl_path)
