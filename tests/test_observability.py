"""What a meta-training run records: wall time, the outer learning rate, theta's norm and the outer
update's norm in every JSONL row and TensorBoard event; the config once as TensorBoard text and
hparams; the held-out panel of curves.png labelled; the warning when the held-out loss rises for
two evaluations running while the meta-loss falls (``metrics.HeldOutWatch``).

The run is learnable Adam on a 4-dimensional quadratic (as in ``test_train``), with a one-task
held-out suite registered for the test.
"""

import os
import struct
import time

import jax
import matplotlib.figure
import optax
import pytest

import tasks
from meta_train import config_flags, layout, metrics, train
from tasks import registry

NUM_STEPS = 4
OUTER_LR = 0.05
OVERRIDES = {
    "num_devices": "0",
    "groups.digits.num_pairs": "4",
    "estimator.sigma": "0.05",
    "outer.learning_rate": str(OUTER_LR),
    "num_outer_steps": str(NUM_STEPS),
    "checkpoint_every": "100",
    "eval.suite": "obs_quadratic",
    "eval.num_tasks": "1",
    "eval.every": "2",
    "eval.num_steps": "10",
}


def _tensorboard_events(directory: str) -> list:
    """Every event in the TFRecord event files of ``directory`` (length, crc, data, crc)."""
    from tensorboardX.proto import event_pb2

    events = []
    for name in sorted(os.listdir(directory)):
        with open(os.path.join(directory, name), "rb") as f:
            data = f.read()
        offset = 0
        while offset < len(data):
            (length,) = struct.unpack("<Q", data[offset : offset + 8])
            event = event_pb2.Event()
            event.ParseFromString(data[offset + 12 : offset + 12 + length])
            events.append(event)
            offset += 12 + length + 4
    return events


def _config():
    config = config_flags.load_config("tiny")
    for key, text in OVERRIDES.items():
        config_flags.apply_override(config, key, text)
    return config


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One tiny run whose held-out watch warns at every evaluation after the first (to see where
    the warning goes); returns ``(summary, workdir, stderr, figure titles and legends)``."""
    patch = pytest.MonkeyPatch()
    patch.setattr(registry, "SUITES", dict(registry.SUITES))
    tasks.register_suite("obs_quadratic", [tasks.suite_entry("quadratic", num_steps=10)])
    patch.setattr(
        metrics.HeldOutWatch,
        "add_eval",
        lambda self, step, scalars: f"warning: test warning at {step}" if step else None,
    )
    drawn = {}
    save = matplotlib.figure.Figure.savefig

    def savefig(figure, *args, **kwargs):
        drawn["titles"] = [axis.get_title() for axis in figure.axes]
        drawn["legends"] = [
            [text.get_text() for text in axis.get_legend().get_texts()] if axis.get_legend() else []
            for axis in figure.axes
        ]
        return save(figure, *args, **kwargs)

    patch.setattr(matplotlib.figure.Figure, "savefig", savefig)
    config = _config()
    workdir = str(tmp_path_factory.mktemp("observability"))
    logged = []
    patch.setattr(train, "_log", logged.append)
    started = time.time()
    try:
        summary = train.meta_train(config, workdir)
    finally:
        patch.undo()
    return summary, workdir, started, "\n".join(logged), drawn


@pytest.mark.slow
def test_jsonl_rows_carry_wall_time_learning_rate_and_norms(run):
    summary, workdir, started, _, _ = run
    rows = metrics.read_jsonl(os.path.join(workdir, layout.METRICS_FILE))
    assert all(started <= row["wall_time"] <= time.time() for row in rows)
    assert [row["wall_time"] for row in rows] == sorted(row["wall_time"] for row in rows)
    steps = [row for row in rows if "meta_loss" in row]
    assert [row["step"] for row in steps] == list(range(1, NUM_STEPS + 1))
    assert all(row["outer_lr"] == pytest.approx(OUTER_LR) for row in steps)
    # ||theta_t|| - ||theta_{t-1}|| is bounded by the update's norm (triangle inequality), and
    # the last row's theta norm is the final theta's.
    theta_key = jax.random.split(jax.random.key(0))[0]  # as meta_train derives it from the seed
    config = _config()
    config.eval.num_tasks = 0  # its suite is registered only while the run goes
    start = config_flags.validate(config).optimizer.init_meta_params(theta_key)
    norms = [float(optax.tree.norm(start))] + [row["theta_norm"] for row in steps]
    for before, after, row in zip(norms, norms[1:], steps, strict=False):
        assert 0 < row["update_norm"] < 1 and abs(after - before) <= row["update_norm"] + 1e-6
    assert norms[-1] == pytest.approx(float(optax.tree.norm(summary["theta"])), rel=1e-5)


@pytest.mark.slow
def test_tensorboard_has_the_scalars_the_config_and_hparams(run):
    _, workdir, _, _, _ = run
    events = _tensorboard_events(os.path.join(workdir, layout.TENSORBOARD_DIR))
    scalars = {}
    for event in events:
        for value in event.summary.value:
            scalars.setdefault(value.tag, []).append((event.step, event.wall_time))
    for tag in ("meta_loss", "outer_lr", "theta_norm", "update_norm"):
        assert [step for step, _ in scalars[tag]] == list(range(1, NUM_STEPS + 1)), tag
    rows = metrics.read_jsonl(os.path.join(workdir, layout.METRICS_FILE))
    wall = {row["step"]: row["wall_time"] for row in rows if "meta_loss" in row}
    assert all(time_ == pytest.approx(wall[step]) for step, time_ in scalars["theta_norm"])
    assert len(scalars["config/text_summary"]) == 1
    config_text = next(
        v.tensor.string_val[0].decode()
        for e in events
        for v in e.summary.value
        if v.tag == "config/text_summary"
    )
    assert '"learning_rate": 0.05' in config_text
    assert "_hparams_/experiment" in scalars and "_hparams_/session_start_info" in scalars
    assert [step for step, _ in scalars["warnings/text_summary"]] == [2, 4]


@pytest.mark.slow
def test_held_out_panel_is_labelled_and_the_warning_is_logged(run):
    _, workdir, _, logged, drawn = run
    assert os.path.exists(os.path.join(workdir, layout.CURVES_FILE))
    panel = drawn["titles"].index(
        f"{metrics.EVAL_PANEL}\nduring meta-training: suite 'obs_quadratic', after 10 inner steps"
    )
    assert drawn["legends"][panel] == ["quadratic test loss", "quadratic train loss"]
    assert "warning: test warning at 2" in logged and "warning: test warning at 4" in logged


# --- The held-out watch on its own.


def _eval(loss: float) -> dict[str, float]:
    return {"eval/a/test_loss": loss, "eval/a/train_loss": 0.0, "eval/b/train_loss": loss}


def _watch(held_out: list[float], meta: list[float | None]) -> list[str | None]:
    watch, messages = metrics.HeldOutWatch(), []
    for step, (loss, meta_loss) in enumerate(zip(held_out, meta, strict=True)):
        if meta_loss is not None:
            watch.add_meta_loss(meta_loss)
        messages.append(watch.add_eval(step, _eval(loss)))
    return messages


def test_warns_when_held_out_rises_twice_while_meta_loss_falls():
    messages = _watch([0.1, 0.2, 0.9], [None, 1.0, 0.2])
    assert messages[:2] == [None, None]
    assert "rose for two evaluations running" in messages[2] and "0.1 -> 0.2 -> 0.9" in messages[2]


@pytest.mark.parametrize(
    "held_out, meta",
    [
        ([0.1, 0.2, 0.15], [None, 1.0, 0.2]),  # rose once, then fell
        ([0.2, 0.1, 0.9], [None, 1.0, 0.2]),  # fell, then rose
        ([0.1, 0.2, 0.9], [None, 0.2, 1.0]),  # the meta-loss rose too
        ([0.1, 0.2, 0.9], [None, None, 0.2]),  # no meta-loss between the first two evaluations
    ],
)
def test_no_warning_otherwise(held_out, meta):
    assert _watch(held_out, meta) == [None, None, None]


def test_held_out_loss_is_the_mean_test_loss_falling_back_to_train_loss():
    scalars = {"eval/a/test_loss": 0.4, "eval/a/train_loss": 0.0, "eval/b/train_loss": 0.2}
    assert metrics.held_out_loss(scalars) == pytest.approx(0.3)
    assert metrics.held_out_loss({"meta_loss": 1.0}) is None
    assert metrics.curve_label("eval/mlp_digits_wide/test_loss") == "mlp_digits_wide test loss"
