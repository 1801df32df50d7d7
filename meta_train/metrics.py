"""Meta-training metrics: a ``clu.metrics`` collection filled inside the jitted outer step, writers
for TensorBoard (tensorboardX, which needs no TensorFlow) and a JSONL file of the same scalars, and
the PNG of the curves at the end of a run.
"""

# No ``from __future__ import annotations``: clu reads the metric classes off the annotations.
import json
import math
import os
from collections.abc import Mapping

import flax
import numpy as np
from clu import metrics as clu_metrics

JSONL_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"
CURVES_FILE = "curves.png"


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
    outer_lr: clu_metrics.LastValue.from_output("outer_lr")


def _as_float(value) -> float:
    return float(np.asarray(value))


class MetricWriter:
    """Writes scalars to ``<workdir>/tensorboard`` and ``<workdir>/metrics.jsonl``.

    ``resume_step``: the step a resumed run restarts from; rows written after it by the interrupted
    run are dropped from the JSONL (and purged from TensorBoard), so the curves show one history.
    ``active=False`` writes nothing (the processes of a multi-host run other than the first).
    The parameter overview text also goes to ``parameter_overview.txt``.
    """

    def __init__(self, workdir: str, resume_step: int = 0, active: bool = True):
        from tensorboardX import SummaryWriter

        self.workdir = workdir
        self.jsonl_path = os.path.join(workdir, JSONL_FILE)
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
            os.path.join(workdir, TENSORBOARD_DIR), purge_step=purge_step
        )

    def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
        if not self.active:
            return
        row = {"step": int(step)}
        for name, value in scalars.items():
            value = _as_float(value)
            row[name] = value if math.isfinite(value) else None
            self.tensorboard.add_scalar(name, value, int(step))
        with open(self.jsonl_path, "a") as f:
            f.write(json.dumps(row) + "\n")
        self.tensorboard.flush()

    def write_text(self, step: int, tag: str, text: str) -> None:
        if not self.active:
            return
        with open(os.path.join(self.workdir, f"{tag}.txt"), "w") as f:
            f.write(text + "\n")
        self.tensorboard.add_text(tag, f"```\n{text}\n```", int(step))

    def close(self) -> None:
        if self.active:
            self.tensorboard.close()


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


CURVE_PANELS = (
    ("meta-loss", lambda name: name == "meta_loss" or name.endswith("/meta_loss")),
    ("estimate norm", lambda name: name == "estimate_norm"),
    ("held-out eval loss", lambda name: name.startswith("eval/") and name.endswith("loss")),
    ("inner particle-steps / s", lambda name: name == "particle_steps_per_s"),
)


def plot_curves(jsonl_path: str, png_path: str, title: str = "") -> str:
    """A PNG of the meta-training curves in ``jsonl_path``: one panel per group of scalars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_jsonl(jsonl_path)
    figure, axes = plt.subplots(1, len(CURVE_PANELS), figsize=(4.2 * len(CURVE_PANELS), 3.4))
    for axis, (label, selects) in zip(axes, CURVE_PANELS, strict=True):
        names = sorted({name for row in rows for name in row if selects(name)})
        for name in names:
            points = [(r["step"], r[name]) for r in rows if r.get(name) is not None]
            if points:
                steps, values = zip(*points, strict=True)
                axis.plot(steps, values, label=name, marker="." if len(points) < 20 else None)
        axis.set_title(label)
        axis.set_xlabel("outer step")
        if label != "inner particle-steps / s" and names:
            positive = all(r.get(n) is None or r[n] > 0 for r in rows for n in names)
            axis.set_yscale("log" if positive else "linear")
        if len(names) > 1:
            axis.legend(fontsize="small")
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(png_path, dpi=100)
    plt.close(figure)
    return png_path
