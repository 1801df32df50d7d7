"""Checkpoints that recover and exports that survive a kill: fallback to the newest checkpoint that
restores and verifies, fingerprints that catch flipped bits, errors that name step and file; an
export killed between ``lopt.save``'s two renames recovered by ``lopt.load``; export files of a
wrong format version or with truncated theta refused in one line."""

import json
import os
import signal
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import lopt
from lopt import export
from meta_train import checkpoint

DEVICE = jax.sharding.SingleDeviceSharding(jax.devices()[0])


def state_at(step: int) -> dict:
    """A small state of the leaf kinds a ``MetaState`` has; ``w`` is large enough that orbax
    stores it in its own compressed chunk, where a flipped bit decodes silently."""
    rng = np.random.default_rng(step)
    return {
        "step": jnp.asarray(step, jnp.int32),
        "w": jnp.asarray(rng.normal(size=100_000).astype(np.float32)),
        "key": jax.random.key(step),
        "mask": jnp.asarray([True, False, True]),
    }


ABSTRACT = jax.tree.map(
    lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=DEVICE), state_at(0)
)


def assert_same(got, want):
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        if jnp.issubdtype(a.dtype, jax.dtypes.prng_key):
            a, b = jax.random.key_data(a), jax.random.key_data(b)
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.fixture()
def saved(tmp_path):
    """A workdir with checkpoints of steps 1, 2 and 3; returns its path."""
    checkpointer = checkpoint.Checkpointer(str(tmp_path), keep=3)
    for step in (1, 2, 3):
        assert checkpointer.save(step, state_at(step), {"step": step})
    checkpointer.close()
    return tmp_path


def restore_latest(workdir):
    """``(step, state, log lines)`` from a fresh ``Checkpointer`` on ``workdir``."""
    lines = []
    checkpointer = checkpoint.Checkpointer(str(workdir), keep=3)
    try:
        restored = checkpointer.restore_latest(ABSTRACT, lines.append)
    finally:
        checkpointer.close()
    step, state, _ = restored
    return step, state, lines


def step_files(workdir, step):
    folder = workdir / "checkpoints" / str(step)
    return sorted((p for p in folder.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)


def test_the_newest_usable_checkpoint_restores_bit_exact(saved):
    step, state, lines = restore_latest(saved)
    assert step == 3 and lines == []
    assert_same(state, state_at(3))


def test_a_truncated_latest_checkpoint_falls_back_to_the_previous_one(saved):
    largest = step_files(saved, 3)[-1]
    with open(largest, "r+b") as f:
        f.truncate(largest.stat().st_size // 2)
    step, state, lines = restore_latest(saved)
    assert step == 2
    assert_same(state, state_at(2))
    assert lines[0].startswith("checkpoint unusable: step 3: ")
    assert "resuming from step 2" in lines[1] and "3.corrupt" in lines[1]
    # Set aside, out of orbax's sight: the resumed run saves step 3 anew.
    assert (saved / "checkpoints" / "3.corrupt").is_dir()
    checkpointer = checkpoint.Checkpointer(str(saved), keep=3)
    assert checkpointer.latest_step() == 2
    assert checkpointer.save(3, state_at(3), {"step": 3})
    checkpointer.close()
    assert restore_latest(saved)[0] == 3


def test_a_truncated_metadata_file_is_named_with_its_step(saved):
    metadata = saved / "checkpoints" / "3" / "state" / "_METADATA"
    metadata.write_text(metadata.read_text()[:50])
    step, _, lines = restore_latest(saved)
    assert step == 2
    assert f"step 3: {metadata} is corrupt or truncated" in lines[0]


def test_a_flipped_bit_is_caught_by_the_fingerprint(saved):
    data = step_files(saved, 3)[-1]  # w's compressed chunk: orbax decodes a flip silently
    raw = bytearray(data.read_bytes())
    raw[len(raw) // 2] ^= 0x10
    data.write_bytes(bytes(raw))
    step, state, lines = restore_latest(saved)
    assert step == 2
    assert_same(state, state_at(2))
    assert "step 3: the data in" in lines[0] and "does not match its fingerprint" in lines[0]
    assert "['w']" in lines[0]


def test_no_usable_checkpoint_is_an_error_naming_every_step(saved):
    for step in (1, 2, 3):
        (saved / "checkpoints" / str(step) / "meta" / "metadata").write_text("{")
    checkpointer = checkpoint.Checkpointer(str(saved), keep=3)
    lines = []
    with pytest.raises(checkpoint.CheckpointError, match="steps 3, 2, 1") as error:
        checkpointer.restore_latest(ABSTRACT, lines.append)
    assert "--overwrite" in str(error.value) and len(lines) == 3


def test_the_fingerprint_changes_with_any_single_bit():
    rng = np.random.default_rng(0)
    values = rng.normal(size=(7, 5)).astype(np.float32)
    tree = {"x": jnp.asarray(values), "k": jax.random.key(3), "h": jnp.ones(4, jnp.bfloat16)}
    reference = checkpoint.fingerprint(tree)
    words = values.view(np.uint32)
    for _ in range(50):
        flipped = words.copy()
        flipped.flat[rng.integers(words.size)] ^= np.uint32(1) << np.uint32(rng.integers(32))
        other = {**tree, "x": jnp.asarray(flipped.view(np.float32))}
        got = checkpoint.fingerprint(other)
        assert got["['x']"] != reference["['x']"]
        assert got["['k']"] == reference["['k']"]


# --- Exports.


def sgdm_export(path, metadata):
    optimizer = lopt.LearnableSGDM()
    theta = optimizer.init_meta_params(jax.random.key(0))
    theta = {**theta, "log_lr": theta["log_lr"] - metadata["version"]}
    lopt.save(path, optimizer, theta, metadata)
    return theta


KILLED_SAVE = """
import os, signal, sys
import jax
import lopt

path, version = sys.argv[1], int(sys.argv[2])
optimizer = lopt.LearnableSGDM()
theta = optimizer.init_meta_params(jax.random.key(0))
theta = {**theta, "log_lr": theta["log_lr"] - version}
real_rename = os.rename

def rename_then_die(source, target):
    real_rename(source, target)
    if ".old-" in os.fspath(target):  # the old export is aside, the new one not yet in place
        os.kill(os.getpid(), signal.SIGKILL)

os.rename = rename_then_die
lopt.save(path, optimizer, theta, {"version": version})
"""


def kill_between_renames(path, version):
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(KILLED_SAVE), str(path), str(version)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == -signal.SIGKILL, result.stderr


def test_load_recovers_an_export_killed_between_the_renames(tmp_path):
    path = tmp_path / "export"
    sgdm_export(path, {"version": 1})
    kill_between_renames(path, 2)
    assert not path.exists()
    debris = sorted(name for name in os.listdir(tmp_path) if name.startswith(".export."))
    assert [name.split("-")[0] for name in debris] == [".export.old", ".export.tmp"]

    _, theta, metadata = lopt.load_optimizer(path)  # rolls the complete new export forward
    assert metadata == {"version": 2}
    want = sgdm_export(tmp_path / "reference", {"version": 2})
    assert_same(theta, want)
    assert sorted(os.listdir(tmp_path)) == ["export", "reference"]


def test_load_rolls_back_when_the_new_export_is_gone(tmp_path):
    path = tmp_path / "export"
    theta = sgdm_export(path, {"version": 1})
    os.rename(path, tmp_path / ".export.old-0123456789ab")  # as if killed, staging then lost
    _, loaded, metadata = lopt.load_optimizer(path)
    assert metadata == {"version": 1}
    assert_same(loaded, theta)
    assert sorted(os.listdir(tmp_path)) == ["export"]


def test_save_after_a_killed_save_recovers_first(tmp_path):
    path = tmp_path / "export"
    sgdm_export(path, {"version": 1})
    os.rename(path, tmp_path / ".export.old-0123456789ab")
    theta = sgdm_export(path, {"version": 3})
    _, loaded, metadata = lopt.load_optimizer(path)
    assert metadata == {"version": 3}
    assert_same(loaded, theta)
    assert sorted(os.listdir(tmp_path)) == ["export"]


@pytest.mark.parametrize("version", [0, -1, True, "1"])
def test_an_export_of_an_invalid_format_version_is_refused(tmp_path, version):
    path = tmp_path / "export"
    sgdm_export(path, {"version": 1})
    config_path = path / export.CONFIG_FILE
    config = json.loads(config_path.read_text())
    config_path.write_text(json.dumps({**config, "format_version": version}))
    with pytest.raises(lopt.CorruptExportError, match="no valid format_version"):
        lopt.load(path)


def test_truncated_theta_is_one_clear_line(tmp_path):
    path = tmp_path / "export"
    sgdm_export(path, {"version": 1})
    for name in (path / export.THETA_DIR).rglob("*"):
        if name.is_file() and os.sep + "d" + os.sep in str(name):
            with open(name, "r+b") as f:
                f.truncate(name.stat().st_size // 2)
    with pytest.raises(lopt.CorruptExportError) as error:
        lopt.load(path)
    message = str(error.value)
    assert message.startswith(f"cannot read theta from {path / export.THETA_DIR}")
    assert "\n" not in message and len(message) < 600
