"""The shipped pretrained optimizer: it is package data (loads with the network cut off), says how
it was made, trains a small task as a full optax transform, and ``meta_train.ship`` writes one
from a finished run."""

import json
import os
import socket

import jax.numpy as jnp
import least_squares
import numpy as np
import pytest
import tiny_run

import lopt
from meta_train import cli, ship


def least_squares_losses(tx, num_steps: int) -> np.ndarray:
    params = {"w": jnp.zeros((8, 3), jnp.float32), "b": jnp.zeros((3,), jnp.float32)}
    return least_squares.train_losses(tx, params, 0, num_steps, offset=0.0)


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError("network access in a test of offline loading")

    monkeypatch.setattr(socket.socket, "connect", refuse)


def test_default_pretrained_loads_offline_and_trains_a_small_task(no_network):
    assert lopt.shipped.DEFAULT_PRETRAINED in lopt.pretrained_names()
    losses = least_squares_losses(lopt.pretrained(num_steps=300), 300)
    assert np.all(np.isfinite(losses))
    assert losses[-1] < 1e-2 * losses[0]


def test_pretrained_records_how_it_was_made():
    info = lopt.pretrained_info()
    assert info["config"]["optimizer"]["architecture"] == "normalized"
    assert info["budget"]["outer_steps"] >= 1
    assert len(info["commit"]) == 40
    curve = info["meta_loss_curve"]
    assert len(curve["step"]) == len(curve["meta_loss"]) >= 2
    optimizer, _, _ = lopt.load_optimizer(lopt.pretrained_path())
    section = info["config"]["optimizer"]
    architecture = section["architecture"]
    if "learning_rate" in section:  # the step size's own keys
        recorded = section["hyperparameters"]
        step_size = lopt.StepSize(*(section[field] for field in lopt.StepSize._fields))
    else:  # recorded before them: among the rule's hyperparameters
        recorded, step_size = lopt.export.upgrade_v1(architecture, section["hyperparameters"])
    assert optimizer == lopt.get_optimizer(architecture, **recorded)
    assert step_size == lopt.load_step_size(lopt.pretrained_path())


def test_pretrained_needs_the_run_length_and_names_what_ships():
    with pytest.raises(ValueError, match="num_steps"):
        lopt.pretrained()
    with pytest.raises(lopt.NotAnExportError, match="shipped"):
        lopt.pretrained("no-such-optimizer")


def test_a_flipped_bit_in_the_shipped_description_is_refused(tmp_path, monkeypatch):
    # One bit: "0.95" -> "0.94" ('5' is 0x35, '4' is 0x34) changes every update of the rule.
    import shutil

    weights = tmp_path / "weights"
    shutil.copytree(os.path.dirname(lopt.pretrained_path()), weights / "flipped")
    config_path = weights / "flipped" / "export" / "optimizer.json"
    text = config_path.read_text()
    # The first is the hyperparameters' (the metadata's config records it again).
    flipped = text.replace('"rms_decay": 0.95', '"rms_decay": 0.94', 1)
    assert json.loads(flipped)["hyperparameters"]["rms_decay"] == 0.94
    config_path.write_text(flipped)
    monkeypatch.setattr(lopt.shipped, "WEIGHTS_DIR", str(weights))
    with pytest.raises(lopt.CorruptExportError, match=f"{config_path} was changed after"):
        lopt.pretrained("flipped", num_steps=100)
    with pytest.raises(lopt.CorruptExportError, match="reinstall lopt"):
        lopt.load(str(config_path.parent), num_steps=100)


def test_the_shipped_export_carries_its_fingerprint():
    assert lopt.load(lopt.pretrained_path(), 100, require_fingerprint=True) is not None


@pytest.mark.slow
def test_ship_copies_a_finished_run_with_its_record(tmp_path):
    workdir = str(tmp_path / "run")
    assert cli.main(["meta-train", *tiny_run.tiny_argv(), "--workdir", workdir]) == 0
    path = ship.ship(workdir, "tiny", "lopt meta-train (tiny)", weights_dir=str(tmp_path / "w"))
    optimizer, _, _ = lopt.load_optimizer(path)
    assert optimizer.architecture == "adam"
    record = ship.training_record(workdir, "lopt meta-train (tiny)")
    assert record["budget"]["outer_steps"] == 4
    assert record["command"] == "lopt meta-train (tiny)"
    assert record["meta_loss_curve"]["step"] == [1, 2, 3, 4]
    assert record["meta_loss_curve"]["standard_error"] == [None] * 4  # one row per bin


def test_the_shipped_curve_is_binned_with_its_standard_error():
    steps = np.arange(10, 2510, 10)  # 250 logged rows
    losses = np.random.default_rng(0).normal(0.25, 0.01, 250)
    curve = ship.binned_curve(steps, losses, max_points=100)
    assert len(curve["step"]) == 100 and sum(curve["rows_per_point"]) == 250
    assert set(curve["rows_per_point"]) == {2, 3} and curve["step"][-1] == 2500
    first = losses[:3]  # the first bins take the extra rows
    assert curve["meta_loss"][0] == pytest.approx(first.mean())
    assert curve["standard_error"][0] == pytest.approx(first.std(ddof=1) / np.sqrt(3))
    # The bins' means average back to the run's mean, weighted by their rows.
    weighted = np.dot(curve["meta_loss"], curve["rows_per_point"]) / 250
    assert weighted == pytest.approx(losses.mean())


@pytest.mark.parametrize("jit", [False, True])
def test_pretrained_warns_once_when_run_past_its_num_steps(jit):
    # The cosine schedule's learning rate is 0 from step num_steps on: the run silently stops.
    import warnings

    import jax
    import optax

    tx = lopt.pretrained(num_steps=10)
    update = jax.jit(tx.update) if jit else tx.update
    params = {"w": jnp.ones((4, 2), jnp.float32)}
    state = tx.init(params)
    moved = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for step in range(30):
            grads = jax.tree.map(lambda p: 0.1 * p + 0.3, params)
            updates, state = update(grads, state, params)
            params = optax.apply_updates(params, updates)
            moved.append(bool(jnp.any(updates["w"] != 0)))
            jax.effects_barrier()
            if step == 9:
                assert not [w for w in caught if "num_steps=10" in str(w.message)]
    assert moved == [True] * 10 + [False] * 20
    past = [str(w.message) for w in caught if "num_steps=10" in str(w.message)]
    assert len(past) == 1
    assert "learning rate is 0 from step 10 on" in past[0]
    assert "lopt.pretrained(num_steps=...)" in past[0]
