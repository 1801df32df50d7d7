"""Meta-training metrics: a ``clu.metrics`` collection filled inside the jitted outer step, writers
for TensorBoard (tensorboardX, which needs no TensorFlow; ``pip install 'lopt[viz]'`` for the
TensorBoard viewer) and a JSONL file of the same scalars, the PNG of the curves at the end of a run,
and ``HeldOutWatch``, which flags held-out loss rising while the meta-loss falls.
"""

# No ``from __future__ import annotations``: clu reads the metric classes off the annotations.
import contextlib
import json
import math
import os
import time
from collections.abc import Mapping

import flax
import numpy as np
from clu import metrics as clu_metrics

from meta_train import layout


@flax.struct.dataclass
class OuterMetrics(clu_metrics.Collection):
    """Per outer step, averaged over the steps between two writes."""

    meta_loss: clu_metrics.Average.from_output("meta_loss")
    estimate_norm: clu_metrics.Average.from_output("estimate_norm")
    masked_fraction: clu_metrics.Average.from_output("masked_fraction")
    nonfinite_count: clu_metrics.Average.from_output("nonfinite_count")
    loss_diff_std: clu_metrics.Average.from_output("loss_diff_std")
    num_resets: clu_metrics.Average.from_output("num_resets")
    skipped_update: clu_metrics.Average.from_output("skipped_update")
    # The outer optimizer's learning rate at the step (the schedule's value, warm-up included).
    outer_lr: clu_metrics.LastValue.from_output("outer_lr")
    # ||theta|| after the step, and ||theta_new - theta_old||: the update actually applied.
    theta_norm: clu_metrics.LastValue.from_output("theta_norm")
    update_norm: clu_metrics.Average.from_output("update_norm")


def _as_float(value) -> float:
    return float(np.asarray(value))


class MetricWriter:
    """Writes scalars to ``layout.TENSORBOARD_DIR`` and ``layout.METRICS_FILE`` in the workdir;
    every JSONL row has ``step`` and ``wall_time`` (Unix seconds, also the TensorBoard events' wall
    time).

    ``resume_step``: the step a resumed run restarts from; rows written after it by the interrupted
    run are dropped from the JSONL (and purged from TensorBoard), so the curves show one history.
    ``active=False`` writes nothing (the processes of a multi-host run other than the first).
    A text (``write_text``) also goes to its file of ``layout.TEXT_FILES``.
    """

    def __init__(self, workdir: str, resume_step: int = 0, active: bool = True):
        from tensorboardX import SummaryWriter

        self.workdir = workdir
        self.jsonl_path = os.path.join(workdir, layout.METRICS_FILE)
        self.active = active
        if not active:
            return
        if resume_step and os.path.exists(self.jsonl_path):
            rows = [row for row in read_jsonl(self.jsonl_path) if row["step"] <= resume_step]
            with open(self.jsonl_path, "w") as f:
                f.writelines(json.dumps(row) + "\n" for row in rows)
        elif not resume_step and os.path.exists(self.jsonl_path):
            os.remove(self.jsonl_path)
        purge_step = resume_step + 1 if resume_step else None
        self.tensorboard = SummaryWriter(
            os.path.join(workdir, layout.TENSORBOARD_DIR), purge_step=purge_step
        )

    def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
        if not self.active:
            return
        row = {"step": int(step), "wall_time": time.time()}
        for name, value in scalars.items():
            value = _as_float(value)
            row[name] = value if math.isfinite(value) else None
            self.tensorboard.add_scalar(name, value, int(step), walltime=row["wall_time"])
        try:
            with open(self.jsonl_path, "a") as f:
                f.write(json.dumps(row) + "\n")
        except OSError as error:
            raise OSError(
                error.errno, f"cannot append to {self.jsonl_path}: {error.strerror}"
            ) from None
        try:
            self.tensorboard.flush()
        except OSError as error:
            folder = os.path.join(self.workdir, layout.TENSORBOARD_DIR)
            raise OSError(
                error.errno, f"cannot write the events in {folder}: {error.strerror}"
            ) from None

    def write_text(self, step: int, tag: str, text: str) -> None:
        """``text`` as TensorBoard text under ``tag`` and in the tag's file (``KeyError`` for a
        tag ``layout.TEXT_FILES`` does not name: every file in a workdir is declared there)."""
        if not self.active:
            return
        with open(os.path.join(self.workdir, layout.TEXT_FILES[tag]), "w") as f:
            f.write(text + "\n")
        self.tensorboard.add_text(tag, f"```\n{text}\n```", int(step))

    def write_config(self, config: Mapping) -> None:
        """The run's config once: as TensorBoard text (JSON) and as hparams (dotted keys), which
        the HParams tab shows next to the final ``meta_loss``."""
        if not self.active:
            return
        from tensorboardX.summary import hparams

        text = json.dumps(config, indent=2, sort_keys=True)
        self.tensorboard.add_text("config", f"```\n{text}\n```", 0)
        flat = {key: _hparam_value(value) for key, value in _flatten(config).items()}
        for summary in hparams(flat, {"meta_loss": float("nan")}):
            self.tensorboard.file_writer.add_summary(summary)
        self.tensorboard.flush()

    def write_warning(self, step: int, message: str) -> None:
        """A warning as TensorBoard text (tag ``warnings``)."""
        if self.active:
            self.tensorboard.add_text("warnings", message, int(step))

    def close(self) -> None:
        if self.active:
            self.tensorboard.close()

    def abort(self) -> None:
        """Stop after a failed write (a full disk) without writing more: the event writers'
        threads end, their unflushable buffers are dropped, and tensorboardX's atexit hook finds
        them closed, so nothing prints a traceback after the run's one-line error. tensorboardX
        has no public way to do this; its private parts are used defensively (a version without
        them only makes this noisier)."""
        if not self.active or self.tensorboard.all_writers is None:
            return
        for file_writer in self.tensorboard.all_writers.values():
            events = file_writer.event_writer
            events._closed = True  # the atexit hook's close becomes a no-op
            with contextlib.suppress(Exception):
                events._worker.stop()
            with contextlib.suppress(Exception):
                events._ev_writer._py_recordio_writer.close()
        self.tensorboard.file_writer = self.tensorboard.all_writers = None


def _flatten(tree: Mapping, prefix: str = "") -> dict:
    flat = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            flat |= _flatten(value, f"{prefix}{key}.")
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _hparam_value(value):
    """TensorBoard hparams hold bools, numbers and strings; anything else as its JSON text."""
    if isinstance(value, bool | int | float | str):
        return value
    return json.dumps(value)


def read_jsonl(path: str) -> list[dict]:
    """The rows of a metrics JSONL file (a torn last line, from a kill mid-write, is skipped)."""
    rows = []
    with open(path) as f:
        for line in f:
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return rows


EVAL_PANEL = "held-out tasks (not meta-trained on)"
META_LOSS_PANEL = "meta-loss"
CURVE_PANELS = (
    (META_LOSS_PANEL, lambda name: name == "meta_loss" or name.endswith("/meta_loss")),
    ("estimate norm", lambda name: name == "estimate_norm"),
    (EVAL_PANEL, lambda name: name.startswith("eval/") and name.endswith("loss")),
    ("inner particle-steps / s", lambda name: name == "particle_steps_per_s"),
)


def curve_label(name: str) -> str:
    """The legend entry of a logged scalar: ``eval/<task>/test_loss`` -> ``<task> test loss``."""
    if name.startswith("eval/"):
        task, _, figure = name[len("eval/") :].rpartition("/")
        return f"{task} {figure.replace('_', ' ')}"
    return name


def smoothing_window(count: int) -> int:
    """An odd moving-window length for ``count`` points: about a tenth of them (the verdict
    compares tenths), at least 5."""
    return max(5, count // 10) | 1


def smooth(values: np.ndarray, window: int) -> tuple[np.ndarray, np.ndarray]:
    """``(mean, spread)``, each ``[len(values)]``: the centred moving mean of ``values`` over
    ``window`` points (fewer at the ends), and the moving standard deviation about it."""
    values = np.asarray(values, np.float64)
    kernel = np.ones(window)
    count = np.convolve(np.ones_like(values), kernel, mode="same")
    mean = np.convolve(values, kernel, mode="same") / count
    square = np.convolve(values**2, kernel, mode="same") / count
    return mean, np.sqrt(np.maximum(square - mean**2, 0.0))


def plot_curves(jsonl_path: str, png_path: str, title: str = "", eval_label: str = "") -> str:
    """A PNG of the meta-training curves in ``jsonl_path``: one panel per group of scalars.

    ``eval_label`` says what the held-out panel shows (e.g. its suite and horizon); its curves
    are labelled by task and figure.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_jsonl(jsonl_path)
    figure, axes = plt.subplots(1, len(CURVE_PANELS), figsize=(4.2 * len(CURVE_PANELS), 3.4))
    for axis, (label, selects) in zip(axes, CURVE_PANELS, strict=True):
        names = sorted({name for row in rows for name in row if selects(name)})
        for name in names:
            points = [(r["step"], r[name]) for r in rows if r.get(name) is not None]
            if not points:
                continue
            steps, values = (np.asarray(column) for column in zip(*points, strict=True))
            if label == META_LOSS_PANEL and len(points) >= 10:
                # The raw meta-loss is noisy enough to hide its trend: draw it faint, and over
                # it the moving mean with a band of the moving standard deviation around it.
                window = smoothing_window(len(points))
                mean, spread = smooth(values, window)
                raw = axis.plot(steps, values, alpha=0.25, linewidth=0.8)
                color = raw[0].get_color()
                axis.plot(steps, mean, color=color, label=f"{curve_label(name)} (mean of {window})")
                axis.fill_between(
                    steps, mean - spread, mean + spread, color=color, alpha=0.2, label="+-1 std"
                )
            else:
                marker = "." if len(points) < 20 else None
                axis.plot(steps, values, label=curve_label(name), marker=marker)
        held_out = label == EVAL_PANEL
        axis.set_title(f"{label}\n{eval_label}" if held_out and eval_label else label)
        axis.set_xlabel("outer step")
        if label != "inner particle-steps / s" and names:
            positive = all(r.get(n) is None or r[n] > 0 for r in rows for n in names)
            axis.set_yscale("log" if positive else "linear")
        if len(names) > 1 or (held_out and names) or (label == META_LOSS_PANEL and names):
            axis.legend(fontsize="small")
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(png_path, dpi=100)
    plt.close(figure)
    return png_path


def held_out_loss(scalars: Mapping[str, float]) -> float | None:
    """The mean over tasks of ``eval/<task>/test_loss`` (``train_loss`` for a task without a test
    loss), or ``None`` when ``scalars`` hold no held-out figures."""
    tasks = {name.split("/")[1] for name in scalars if name.startswith("eval/")}
    values = []
    for task in sorted(tasks):
        value = scalars.get(f"eval/{task}/test_loss", scalars.get(f"eval/{task}/train_loss"))
        if value is not None:
            values.append(float(value))
    return float(np.mean(values)) if values else None


class HeldOutWatch:
    """Flags held-out loss rising for two evaluations running while the meta-loss falls: theta
    getting better at the meta-training tasks and worse at the held-out ones.

    ``add_meta_loss(value)`` at every log step; ``add_eval(step, scalars)`` at every held-out
    evaluation returns a warning, or ``None``. The held-out loss of an evaluation is
    ``held_out_loss``; its meta-loss is the mean of the meta-losses logged since the evaluation
    before. It warns at evaluation ``i`` when ``held_out[i-2] < held_out[i-1] < held_out[i]`` and
    ``meta[i] < meta[i-1]``.
    """

    def __init__(self):
        self.pending: list[float] = []
        self.history: list[tuple[int, float, float | None]] = []  # (step, held-out, meta-loss)

    def add_meta_loss(self, value: float) -> None:
        if value is not None and math.isfinite(value):
            self.pending.append(float(value))

    def add_eval(self, step: int, scalars: Mapping[str, float]) -> str | None:
        loss = held_out_loss(scalars)
        if loss is None:
            return None
        meta = float(np.mean(self.pending)) if self.pending else None
        self.pending = []
        self.history.append((int(step), loss, meta))
        if len(self.history) < 3:
            return None
        (s0, h0, _), (s1, h1, m1), (s2, h2, m2) = self.history[-3:]
        if not (h0 < h1 < h2) or m1 is None or m2 is None or not m2 < m1:
            return None
        return (
            f"warning: the held-out loss rose for two evaluations running ({h0:.4g} -> {h1:.4g} "
            f"-> {h2:.4g} at outer steps {s0}, {s1}, {s2}; mean test loss over the eval tasks) "
            f"while the meta-loss fell ({m1:.4g} -> {m2:.4g}, mean since the evaluation before): "
            "theta may be fitting the meta-training tasks at the held-out tasks' expense (see "
            f"the held-out panel of {layout.CURVES_FILE})"
        )
