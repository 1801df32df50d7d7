"""A user's own task: ``tasks.from_flax`` (nnx and linen), ``register_family`` / ``register_suite``,
held-out tasks of a user family, ``--import`` on the command line, and the whole path end to end
from a module outside the package: meta-train from the CLI, evaluate from the CLI, train an nnx
model with the export.

Registrations go to copies of the registries (``registries`` fixture), so no test leaves a user
family behind for the others.
"""

import json
import os
import subprocess
import sys
import textwrap

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

import lopt
import tasks
from meta_train import cli, config_flags
from tasks import registry

USER_MODULE = '''
"""Sine regression with a flax.nnx MLP: a task family and a held-out suite."""

import jax.numpy as jnp
import numpy as np
from flax import nnx

import tasks


class MLP(nnx.Module):
    def __init__(self, hidden: int, *, rngs: nnx.Rngs):
        self.hidden = nnx.Linear(1, hidden, rngs=rngs)
        self.out = nnx.Linear(hidden, 1, rngs=rngs)

    def __call__(self, x):
        return self.out(jnp.tanh(self.hidden(x)))


def sine_data(n: int = 512):
    x = np.random.default_rng(0).uniform(-3, 3, (n, 1)).astype(np.float32)
    return x, np.sin(x)


@tasks.register_family("sine_mlp", description="nnx MLP 1-h-1 on y = sin(x)")
def sine_mlp(hidden: int = 16, batch_size: int = 32) -> tasks.TaskFamily:
    x, y = sine_data()
    return tasks.from_flax(
        lambda rngs: MLP(hidden, rngs=rngs), x, y, loss="mse", batch_size=batch_size,
        name=f"sine_mlp_{hidden}",
    )


tasks.register_suite(
    "mine",
    [
        tasks.suite_entry("sine_mlp", num_steps=20),
        tasks.suite_entry("sine_mlp", name="sine_wide", overrides={"hidden": 32}, num_steps=20),
    ],
)
'''


@pytest.fixture
def registries(monkeypatch):
    """Private copies of the family and suite registries and of sys.path (``--import`` may add
    to it); modules imported by path are forgotten afterwards, so the next import registers
    again."""
    monkeypatch.setattr(registry, "FAMILIES", dict(registry.FAMILIES))
    monkeypatch.setattr(registry, "SUITES", dict(registry.SUITES))
    monkeypatch.setattr(sys, "path", list(sys.path))
    before = set(sys.modules)
    yield
    for name in set(sys.modules) - before:
        if name.startswith("lopt_user_"):
            del sys.modules[name]


@pytest.fixture
def user_module(tmp_path):
    path = tmp_path / "my_tasks.py"
    path.write_text(textwrap.dedent(USER_MODULE))
    return path


class MLP(nnx.Module):
    def __init__(self, hidden: int, *, rngs: nnx.Rngs):
        self.hidden = nnx.Linear(1, hidden, rngs=rngs)
        self.out = nnx.Linear(hidden, 1, rngs=rngs)

    def __call__(self, x):
        return self.out(jnp.tanh(self.hidden(x)))


class LinenClassifier(nn.Module):
    @nn.compact
    def __call__(self, x):
        return nn.Dense(10)(nn.relu(nn.Dense(16)(x)))


def _sine(n=200):
    x = np.random.default_rng(0).uniform(-3, 3, (n, 1)).astype(np.float32)
    return x, np.sin(x)[:, 0]


def _sine_family(hidden: int = 8, batch_size: int = 16) -> tasks.TaskFamily:
    x, y = _sine()
    return tasks.from_flax(lambda rngs: MLP(hidden, rngs=rngs), x, y, loss="mse", batch_size=16)


def _leaves(tree):
    return [np.asarray(leaf) for leaf in jax.tree.leaves(tree)]


# --- from_flax.


@pytest.mark.slow
def test_from_flax_nnx_regression_seeds_and_splits():
    family = _sine_family()
    assert family.data.train_x.shape[0] + family.data.test_x.shape[0] < 200 + 1
    assert family.data.test_y.shape[1:] == (1,)  # targets [n] reshaped to the output [n, 1]
    configs = jax.vmap(family.sample)(jax.random.split(jax.random.key(0), 4))
    assert np.all(np.asarray(configs.init_seed) < tasks.SAMPLED_SEED_END)
    init = jax.vmap(lambda c: family.task(c).init(jax.random.key(0)))(configs)
    kernels = np.asarray(init["hidden"]["kernel"])
    assert kernels.shape == (4, 1, 8)
    assert len({kernel.tobytes() for kernel in kernels}) == 4  # each seed its own init
    task = family.task(family.default_config())
    params = task.init(jax.random.key(0))
    loss = task.loss(params, jax.random.key(1))
    assert np.isfinite(loss) and set(task.evaluate(params)) == {"loss"}
    grads = jax.grad(task.loss)(params, jax.random.key(1))
    stepped = jax.tree.map(lambda p, g: p - 0.1 * g, params, grads)
    assert task.loss(stepped, jax.random.key(1)) < loss


@pytest.mark.slow
def test_from_flax_linen_classifier_with_test_split():
    from sklearn.datasets import load_digits

    digits = load_digits()
    x, y = digits.data / 16.0, digits.target
    family = tasks.from_flax(LinenClassifier(), x[:1500], y[:1500], x[1500:], y[1500:])
    assert family.data.test_x.shape[0] == len(y) - 1500 and family.data.num_classes == 10
    task = family.task(family.default_config())
    params = task.init(jax.random.key(0))
    assert set(params) == {"Dense_0", "Dense_1"}
    metrics = task.evaluate(params, "test")
    assert 0.0 <= float(metrics["accuracy"]) <= 1.0 and np.isfinite(metrics["loss"])


def _mlp4(rngs):
    return MLP(4, rngs=rngs)


@pytest.mark.parametrize(
    "model, arrays, options, error, match",
    [
        ("built", "xy", {}, TypeError, "rngs"),
        (_mlp4, "x y[:5]", {}, ValueError, "y_train"),
        (_mlp4, "x y x", {}, ValueError, "both"),
        (_mlp4, "xy", {"loss": "l1"}, ValueError, "mse"),
        (_mlp4, "x yy", {"loss": "mse"}, ValueError, "model outputs"),
        (lambda rngs: 3, "xy", {}, TypeError, "not an nnx.Module"),
    ],
)
def test_from_flax_errors_name_the_problem(model, arrays, options, error, match):
    x, y = _sine()
    named = {
        "xy": (x, y),
        "x y[:5]": (x, y[:5]),
        "x y x": (x, y, x),
        "x yy": (x, np.stack([y, y], 1)),
    }
    model = MLP(4, rngs=nnx.Rngs(0)) if model == "built" else model
    with pytest.raises(error, match=match):
        tasks.from_flax(model, *named[arrays], **options)


# --- Registration and held-out tasks.


def test_register_family_and_suite(registries):
    tasks.register_family("sine", _sine_family, description="sine")
    tasks.register_family("sine", _sine_family)  # the same function again: a no-op
    assert "sine" in tasks.family_names()
    assert registry.family_options("sine") == {"hidden": 8, "batch_size": 16}
    assert tasks.get_family("sine", hidden=4).task
    entries = tasks.register_suite(
        "mine", ["sine", tasks.suite_entry("sine", name="narrow", overrides={"hidden": 2})]
    )
    assert [e.name for e in entries] == ["sine", "narrow"]
    suite = tasks.get_suite("mine")
    seeds = [int(task.config.init_seed) for task in suite]
    assert all(seed >= tasks.SAMPLED_SEED_END for seed in seeds) and len(set(seeds)) == 2
    assert "sine" in registry.format_listing() and "'mine'" in registry.format_listing()

    @tasks.register_family("decorated", defaults={"hidden": 3})
    def decorated(hidden: int, batch_size: int = 8) -> tasks.TaskFamily:
        return _sine_family(hidden, batch_size)

    assert registry.family_options("decorated")["hidden"] == 3


def test_registration_errors(registries):
    with pytest.raises(ValueError, match="already registered"):
        tasks.register_family("mlp_digits", _sine_family)
    with pytest.raises(TypeError, match="not parameters"):
        tasks.register_family("x", _sine_family, defaults={"width": 3})
    with pytest.raises(TypeError, match="needs hidden"):
        tasks.register_family("x", lambda hidden: None)
    with pytest.raises(ValueError, match="without spaces"):
        tasks.register_family("a b", _sine_family)
    with pytest.raises(tasks.UnknownNameError, match="unknown task family 'nope'"):
        tasks.register_suite("s", ["nope"])
    with pytest.raises(TypeError, match="no option width"):
        tasks.register_suite("s", [tasks.suite_entry("quadratic", overrides={"width": 2})])
    with pytest.raises(ValueError, match="several tasks"):
        tasks.register_suite("s", ["quadratic", "quadratic"])
    with pytest.raises(ValueError, match="already registered"):
        tasks.register_suite("tiny", ["quadratic"])
    # One hierarchy for unknown names: task names and optimizer architectures are ValueErrors.
    with pytest.raises(ValueError):
        tasks.get_family("nope")
    with pytest.raises(ValueError):
        lopt.get_optimizer("nope")


def test_held_out_tasks_of_a_family_use_unsampled_seeds():
    held_out = tasks.held_out_tasks(_sine_family(), num_steps=30, count=3)
    assert [task.num_steps for task in held_out] == [30, 30, 30]
    seeds = {int(task.config.init_seed) for task in held_out}
    assert len(seeds) == 3 and min(seeds) >= tasks.SAMPLED_SEED_END
    by_name = tasks.held_out_tasks("quadratic", 10, count=1, dim=4)
    params = by_name[0].family.task(by_name[0].config).init(jax.random.key(0))
    assert [leaf.shape for leaf in jax.tree.leaves(params)] == [(4,)]


def test_config_validation_accepts_a_registered_family(registries):
    config = config_flags.load_config("default")
    config.groups.digits.family = "sine"
    message = r"groups\.digits\.family.*unknown task family 'sine'"
    with pytest.raises(config_flags.ConfigError, match=message):
        config_flags.validate(config)
    tasks.register_family("sine", _sine_family)
    config.groups.digits.overrides = ml_collections.ConfigDict({"hidden": 4})
    config_flags.validate(config)


# --- --import on the command line.


def test_tasks_list_imports_a_user_module(registries, user_module, capsys):
    assert cli.main(["tasks", "list", "--import", str(user_module)]) == 0
    listing = capsys.readouterr().out
    assert "sine_mlp" in listing and "suite 'mine'" in listing and "hidden=16" in listing


def test_a_module_that_fails_to_import_is_one_line_and_status_2(
    registries, tmp_path, monkeypatch, capsys
):
    (tmp_path / "broken.py").write_text("raise RuntimeError('boom\\nmore')\n")
    monkeypatch.chdir(tmp_path)
    for reference, named in [
        ("broken", "RuntimeError: boom"),
        ("no_such_module", "No module named 'no_such_module'"),
        (str(tmp_path / "missing.py"), "no such file"),
    ]:
        assert cli.main(["tasks", "list", "--import", reference]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and named in err and reference in err, err


# --- The whole path from a module outside the package.


def _lopt_command() -> list[str]:
    script = os.path.join(os.path.dirname(sys.executable), "lopt")
    if os.path.exists(script):
        return [script]
    return [sys.executable, "-c", "import sys; from meta_train.cli import main; sys.exit(main())"]


def _run(args: list[str], cwd) -> str:
    result = subprocess.run(
        [*_lopt_command(), *args], cwd=cwd, capture_output=True, text=True, timeout=900
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


@pytest.mark.slow
def test_own_task_meta_train_evaluate_and_nnx_training(registries, user_module, tmp_path):
    # 1. Meta-train on the user's family, with the periodic eval on the user's suite.
    _run(
        [
            "meta-train",
            "--import",
            "my_tasks",
            "--workdir",
            "run",
            "--config.groups.digits.family=sine_mlp",
            "--config.groups.digits.num_pairs=2",
            "--config.estimator.horizon=8",
            "--config.estimator.window=2",
            "--config.num_outer_steps=3",
            "--config.log_every=1",
            "--config.eval.suite=mine",
            "--config.eval.num_tasks=1",
            "--config.eval.every=3",
            "--config.eval.num_steps=0",
            "--config.comparison.num_tasks=0",
            "--config.progress=false",
        ],
        cwd=tmp_path,
    )
    export = tmp_path / "run" / "export"
    _, _, metadata = lopt.load_optimizer(export)
    assert metadata["families"] == {"digits": "sine_mlp"} and metadata["meta_training_steps"] == 3
    rows = [
        json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    ]
    assert [row["step"] for row in rows if "eval/sine_mlp/test_loss" in row] == [0, 3]

    # 2. Evaluate it on the user's suite.
    out = _run(
        [
            "evaluate",
            "--import",
            str(user_module),
            "--optimizer",
            str(export),
            "--suite",
            "mine",
            "--steps",
            "10",
            "--seeds",
            "1",
            "--horizons",
            "1",
            "--grid-points",
            "2",
            "--no-plots",
            "--no-progress",
            "--fast-compile",
            "--out",
            "eval",
        ],
        cwd=tmp_path,
    )
    assert "sine_wide" in out
    report = json.loads((tmp_path / "eval" / "report.json").read_text())
    assert "sine_mlp" in json.dumps(report) and "sine_wide" in json.dumps(report)

    # 3. Train the user's nnx model with the export through optax.
    module = tasks.import_tasks(str(user_module))
    x, y = module.sine_data()
    model = module.MLP(16, rngs=nnx.Rngs(1))
    optimizer = nnx.Optimizer(model, lopt.load(export, num_steps=100), wrt=nnx.Param)
    mse = lambda model: jnp.mean(jnp.square(model(x) - y))

    @nnx.jit
    def step(model, optimizer):
        loss, grads = nnx.value_and_grad(mse)(model)
        optimizer.update(model, grads, value=loss)
        return loss

    first = float(mse(model))
    for _ in range(100):
        step(model, optimizer)
    assert float(mse(model)) < 0.8 * first
