"""Export: optax transforms, save/load (same and fresh process), composition with optax, flax and
orbax, atomic saves, and the errors a broken export gives."""

import json
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import lopt
from lopt import export

NUM_STEPS = 50


def make_params():
    return {
        "w": np.random.default_rng(3).normal(size=(4, 3)).astype(np.float32),
        "b": jnp.zeros((3,), jnp.bfloat16),
        "s": np.float32(1.5),
    }


def toy_loss(params, x):
    pred = jnp.tanh(x @ params["w"] + params["b"].astype(jnp.float32)) * params["s"]
    return jnp.mean(jnp.square(pred - 0.5))


X = np.linspace(-1.0, 1.0, 8 * 4, dtype=np.float32).reshape(8, 4)


@pytest.fixture(scope="module")
def reference_updates(exported):
    """Updates of the optimizer as it was before saving."""
    _, optimizer, theta, _ = exported
    return train_updates(lopt.to_optax(optimizer, theta, NUM_STEPS))


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """An LSTM optimizer (hidden state that must survive export and checkpoints), with a theta
    that differs from its initialisation, saved once."""
    optimizer = lopt.LSTMOptimizer(hidden_size=4)
    theta = optimizer.init_meta_params(jax.random.key(0))
    theta = jax.tree.map(lambda x: (np.asarray(x) * 1.5 + 0.01).astype(np.float32), theta)
    path = tmp_path_factory.mktemp("exports") / "lstm"
    metadata = {"num_steps": NUM_STEPS, "estimator": "es_single", "family": "toy"}
    lopt.save(path, optimizer, theta, metadata)
    return path, optimizer, theta, metadata


def train_updates(tx, num_steps=3):
    """The updates of ``num_steps`` steps of ``tx`` on the toy (one jitted scan), as numpy."""

    def step(carry, _):
        params, state = carry
        loss, grads = jax.value_and_grad(toy_loss)(params, X)
        updates, state = tx.update(grads, state, params, value=loss)
        return (optax.apply_updates(params, updates), state), updates

    def train(params):
        _, updates = jax.lax.scan(step, (params, tx.init(params)), None, length=num_steps)
        return updates

    return jax.tree.map(np.asarray, jax.jit(train)(make_params()))


def assert_trees_identical(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        assert np.asarray(x).dtype == np.asarray(y).dtype
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_save_then_load_gives_the_same_optimizer_theta_and_bit_identical_updates(
    exported, reference_updates
):
    path, optimizer, theta, metadata = exported
    loaded_optimizer, loaded_theta, loaded_metadata = lopt.load_optimizer(path)
    assert loaded_optimizer == optimizer
    assert loaded_metadata == metadata
    assert_trees_identical(loaded_theta, theta)
    loaded = lopt.load(path)  # num_steps comes from the metadata
    assert_trees_identical(train_updates(loaded), reference_updates)


def test_load_in_a_fresh_process_gives_bit_identical_updates(exported, reference_updates, tmp_path):
    path, _, _, _ = exported
    expected = reference_updates
    script = textwrap.dedent(
        f"""
        import sys
        sys.path.insert(0, {os.path.dirname(__file__)!r})
        import jax
        import numpy as np
        import lopt
        from test_lopt_export import train_updates
        leaves = jax.tree.leaves(train_updates(lopt.load({str(path)!r})))
        np.savez({str(tmp_path / "out.npz")!r}, *[np.asarray(x, np.float32) for x in leaves])
        """
    )
    subprocess.run([sys.executable, "-c", script], check=True, timeout=120)
    with np.load(tmp_path / "out.npz") as saved:
        got = [saved[f"arr_{i}"] for i in range(len(saved.files))]
    want = [np.asarray(x, np.float32) for x in jax.tree.leaves(expected)]
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_array_equal(g, w)


def test_composes_with_optax_chain_flax_train_state_and_orbax_checkpoints(exported, tmp_path):
    """A clipped learned optimizer inside a flax TrainState, trained with a jitted step; the optax
    state (with the LSTM's hidden states) is checkpointed with orbax mid-run, and resuming from the
    checkpoint gives exactly the same params as not stopping."""
    import flax.training.train_state  # here, so the fresh-process test need not import flax
    import orbax.checkpoint as ocp

    path, _, _, _ = exported
    tx = optax.chain(optax.clip_by_global_norm(1.0), lopt.load(path))
    state = flax.training.train_state.TrainState.create(
        apply_fn=toy_loss, params=make_params(), tx=tx
    )

    @jax.jit
    def train_step(state):
        grads = jax.grad(state.apply_fn)(state.params, X)
        return state.apply_gradients(grads=grads)

    for _ in range(2):
        state = train_step(state)
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(tmp_path / "ckpt", state.opt_state)
    checkpointer.wait_until_finished()
    restored_opt_state = checkpointer.restore(
        tmp_path / "ckpt", jax.tree.map(ocp.utils.to_shape_dtype_struct, state.opt_state)
    )
    checkpointer.close()
    assert restored_opt_state[1].signature == state.opt_state[1].signature
    lstm_state = restored_opt_state[1].inner
    assert isinstance(lstm_state, lopt.LSTMOptState)
    assert np.abs(np.asarray(lstm_state.hidden)).max() > 0
    resumed = state.replace(opt_state=restored_opt_state)
    for _ in range(2):
        state, resumed = train_step(state), train_step(resumed)
    assert_trees_identical(resumed.params, state.params)


def test_to_optax_checks_its_arguments():
    optimizer = lopt.MLPOptimizer(hidden_sizes=(4,))
    theta = optimizer.init_meta_params(jax.random.key(0))
    with pytest.raises(ValueError, match="needs num_steps"):
        lopt.to_optax(optimizer, theta, None)
    tx = lopt.to_optax(optimizer, theta, 10)
    params = {"w": np.ones((2,), np.float32)}
    with pytest.raises(ValueError, match=r"need the params: call update\(grads, state, params\)"):
        tx.update(params, tx.init(params))
    # The loss reaches an optimizer that uses it through optax.chain's extra arguments.
    with_loss = lopt.MLPOptimizer(hidden_sizes=(4,), use_loss=True)
    chained = optax.chain(
        optax.clip_by_global_norm(1.0),
        lopt.to_optax(with_loss, with_loss.init_meta_params(jax.random.key(0)), 10),
    )
    state = chained.init(params)
    updates, _ = jax.jit(chained.update)(params, state, params, value=np.float32(2.0))
    assert np.all(np.isfinite(np.asarray(updates["w"])))
    with pytest.raises(ValueError, match="needs the loss"):
        chained.update(params, state, params)
    # Hand-designed optimizers have no time features and need no horizon.
    adam = lopt.LearnableAdam()
    tx = lopt.to_optax(adam, adam.init_meta_params(jax.random.key(0)), None)
    updates, _ = jax.jit(tx.update)(params, tx.init(params), params)
    np.testing.assert_allclose(updates["w"], -1e-3, rtol=1e-5)


def test_save_replaces_an_export_atomically_and_leaves_no_debris(tmp_path, monkeypatch):
    optimizer = lopt.LearnableSGDM()
    theta = optimizer.init_meta_params(jax.random.key(0))
    path = tmp_path / "sgdm"
    lopt.save(path, optimizer, theta, {"version": 1})
    newer = {**theta, "log_lr": theta["log_lr"] - 1.0}
    lopt.save(path, optimizer, newer, {"version": 2})
    _, loaded, metadata = lopt.load_optimizer(path)
    assert metadata == {"version": 2}
    assert_trees_identical(loaded, newer)
    assert sorted(os.listdir(tmp_path)) == ["sgdm"]

    class FailingCheckpointer:
        """Writes part of theta, then fails, as a full disk or a kill would."""

        def save(self, directory, tree):
            os.makedirs(directory)
            with open(os.path.join(directory, "partial"), "w") as f:
                f.write("half")
            raise OSError("No space left on device")

    monkeypatch.setattr(export, "_checkpointer", FailingCheckpointer)
    with pytest.raises(OSError, match="No space left"):
        lopt.save(path, optimizer, theta, {"version": 3})
    monkeypatch.undo()
    _, loaded, metadata = lopt.load_optimizer(path)
    assert metadata == {"version": 2}
    assert_trees_identical(loaded, newer)
    assert sorted(os.listdir(tmp_path)) == ["sgdm"]


def test_save_refuses_bad_input(tmp_path):
    optimizer = lopt.LearnableSGDM()
    theta = optimizer.init_meta_params(jax.random.key(0))
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match=r"refusing to replace .*notes"):
        lopt.save(tmp_path / "notes", optimizer, theta)
    assert (tmp_path / "notes" / "todo.txt").read_text() == "keep me"
    with pytest.raises(ValueError, match="theta does not match"):
        lopt.save(tmp_path / "x", optimizer, {"log_lr": theta["log_lr"]})
    with pytest.raises(ValueError, match="metadata must be JSON data"):
        lopt.save(tmp_path / "x", optimizer, theta, {"fn": print})
    assert not (tmp_path / "x").exists()


@pytest.fixture()
def broken_copy(exported, tmp_path):
    """A fresh copy of the export to damage."""
    import shutil

    path = tmp_path / "copy"
    shutil.copytree(exported[0], path)
    return path


def edit_config(path, **changes):
    """Change the description as a writer would (its fingerprint, if it has one, kept valid)."""
    config_path = path / export.CONFIG_FILE
    config = json.loads(config_path.read_text())
    config.update(changes)
    if export.FINGERPRINT_KEY in config:
        config[export.FINGERPRINT_KEY] = export.fingerprint(config)
    config_path.write_text(json.dumps(config))


def test_error_for_a_path_that_is_not_an_export(tmp_path):
    with pytest.raises(lopt.NotAnExportError, match=f"no exported optimizer at {tmp_path}/nope"):
        lopt.load(tmp_path / "nope")
    (tmp_path / "file").write_text("x")
    with pytest.raises(lopt.NotAnExportError, match=f"{tmp_path}/file is a file"):
        lopt.load(tmp_path / "file")
    (tmp_path / "dir").mkdir()
    with pytest.raises(lopt.NotAnExportError, match=f"{tmp_path}/dir is not an exported optim"):
        lopt.load(tmp_path / "dir")
    assert issubclass(lopt.NotAnExportError, FileNotFoundError)


def test_error_for_a_truncated_description(broken_copy):
    config_path = broken_copy / export.CONFIG_FILE
    config_path.write_text(config_path.read_text()[:40])
    with pytest.raises(lopt.CorruptExportError, match=f"{config_path} is corrupt or truncated"):
        lopt.load(broken_copy)


def test_error_for_truncated_theta_data(broken_copy):
    theta_dir = broken_copy / export.THETA_DIR
    data_files = [
        os.path.join(root, name)
        for root, _, names in os.walk(theta_dir)
        for name in names
        if os.sep + "d" + os.sep in os.path.join(root, name)
    ]
    assert data_files
    for name in data_files:
        with open(name, "r+b") as f:
            f.truncate(os.path.getsize(name) // 2)
    with pytest.raises(lopt.CorruptExportError, match=f"cannot read theta from {theta_dir}"):
        lopt.load(broken_copy)


def test_error_for_missing_theta(broken_copy):
    import shutil

    shutil.rmtree(broken_copy / export.THETA_DIR)
    with pytest.raises(lopt.CorruptExportError, match=f"{broken_copy} is incomplete"):
        lopt.load(broken_copy)


def test_error_for_theta_that_does_not_match_its_checksum(broken_copy, tmp_path):
    # theta/ of another export of the same shapes: the description (and its fingerprint) is
    # intact, so only the theta checksum can tell.
    import shutil

    optimizer = lopt.LSTMOptimizer(hidden_size=4)
    other = optimizer.init_meta_params(jax.random.key(1))
    lopt.save(tmp_path / "other", optimizer, other, {"num_steps": NUM_STEPS})
    shutil.rmtree(broken_copy / export.THETA_DIR)
    shutil.copytree(tmp_path / "other" / export.THETA_DIR, broken_copy / export.THETA_DIR)
    with pytest.raises(lopt.CorruptExportError, match="does not match the checksum"):
        lopt.load(broken_copy)


def test_an_export_from_before_fingerprints_loads_with_its_theta_check(broken_copy):
    config = json.loads((broken_copy / export.CONFIG_FILE).read_text())
    del config[export.FINGERPRINT_KEY]
    (broken_copy / export.CONFIG_FILE).write_text(json.dumps(config))
    assert lopt.load(broken_copy) is not None
    with pytest.raises(lopt.CorruptExportError, match="has no fingerprint_sha256: re-export"):
        lopt.load(broken_copy, require_fingerprint=True)
    edit_config(broken_copy, theta_sha256="0" * 64)
    with pytest.raises(lopt.CorruptExportError, match="does not match the checksum"):
        lopt.load(broken_copy)
    edit_config(broken_copy, theta_sha256=config["theta_sha256"])
    export.add_fingerprint(broken_copy)
    assert lopt.load(broken_copy, require_fingerprint=True) is not None


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ('"hidden_size": 4', '"hidden_size": 5'),  # a hyperparameter
        ('"num_steps": 50', '"num_steps": 58'),  # the horizon load defaults to
        ('"architecture": "lstm"', '"architecture": "lstn"'),
        ("theta digit", None),  # one hex digit of theta's checksum
    ],
)
def test_a_one_character_edit_of_the_description_is_refused(broken_copy, old, new):
    config_path = broken_copy / export.CONFIG_FILE
    text = config_path.read_text()
    if new is None:
        digest = json.loads(text)["theta_sha256"]
        old = f'"theta_sha256": "{digest}"'
        new = old.replace(digest, ("1" if digest[0] != "1" else "2") + digest[1:])
    assert text.count(old) == 1 and len(old) == len(new)
    config_path.write_text(text.replace(old, new))
    with pytest.raises(lopt.CorruptExportError) as error:
        lopt.load(broken_copy)
    message = str(error.value)
    assert "\n" not in message
    assert f"{config_path} was changed after lopt.save wrote it" in message
    assert "re-export it with lopt.save" in message


def test_error_for_an_unknown_architecture(broken_copy):
    edit_config(broken_copy, architecture="hypernetwork")
    with pytest.raises(lopt.UnknownArchitectureError, match=f"{broken_copy}: unknown optimizer"):
        lopt.load(broken_copy)


def test_error_for_a_newer_format_version(broken_copy):
    edit_config(broken_copy, format_version=export.FORMAT_VERSION + 1, lopt_version="9.0")
    with pytest.raises(
        lopt.NewerFormatError,
        match=f"{broken_copy} has format version {export.FORMAT_VERSION + 1}, written by lopt 9.0",
    ):
        lopt.load(broken_copy)


def test_error_for_missing_horizon(exported, tmp_path):
    _, optimizer, theta, _ = exported
    lopt.save(tmp_path / "no_horizon", optimizer, theta)
    with pytest.raises(ValueError, match=r"no 'num_steps': pass lopt.load\(path, num_steps=...\)"):
        lopt.load(tmp_path / "no_horizon")
    assert lopt.load(tmp_path / "no_horizon", num_steps=10) is not None
