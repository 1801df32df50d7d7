"""Contenders by name: each trains a tiny task through ``evaluate``; the tie rule; the grid-edge
flag; learned rules of one architecture share a compiled trainer."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import lopt
from meta_train import cli
from meta_train.evaluation import contenders, eval_tasks, policy, trainer
from meta_train.evaluation import evaluate as evaluation
from tasks.base import Task


class Bowl(Task):
    """``0.5 * ||w - 3||^2`` from ``w = 0``, one matrix and one vector (Muon takes the matrix)."""

    def init(self, key):
        return {"w": jnp.zeros((4, 3)), "b": jnp.zeros(3)}

    def loss(self, params, key):
        return 0.5 * sum(jnp.sum((p - 3.0) ** 2) for p in jax.tree.leaves(params))

    def eval_loss(self, params, key, split="outer_valid"):
        return self.loss(params, key)

    def evaluate(self, params, split="test"):
        return {"loss": self.loss(params, None)}


def test_every_named_contender_trains_a_tiny_task():
    names = contenders.names()
    assert {
        "adamw",
        "sgdm",
        "prodigy",
        "schedule_free_adamw",
        "dadapt_adamw",
        "dog",
        "dowg",
        "mechanize",
        "cocob",
        "muon",
    } <= set(names)
    assert set(lopt.pretrained_names()) <= set(names)  # discovered, not listed
    peers = [name for name in names if name not in ("adamw", lopt.pretrained_names()[0])]
    report = evaluation.evaluate(
        lopt.pretrained_names()[0],
        {"bowl": Bowl()},
        num_steps=30,
        seeds=2,
        baselines=("adamw",),
        reference="adamw",
        peers=[*peers, "untrained:normalized"],
        untrained_floor=False,
        progress=False,
        compiler_options=evaluation.FAST_COMPILE,
    )
    runs = report.tasks[0].runs
    assert set(runs) >= set(names)
    initial = 0.5 * 15 * 9.0
    for label, run in runs.items():
        final = run.train.metrics["train_loss"]
        assert np.all(np.isfinite(final)) and np.all(final < initial), label
        assert run.train.num_diverged == 0, label
    assert not runs["prodigy"].grid and runs["adamw"].tuned
    assert report.reference == "adamw" and report.subject == lopt.pretrained_names()[0]
    # Each row is its own optimizer's: the tuning-free ones share one trainer, whose member
    # index picks the transform; run alone (its own trainer) each gives the same losses.
    for name in ("dog", "cocob"):
        alone = (
            evaluation.evaluate(
                name,
                {"bowl": Bowl()},
                num_steps=30,
                seeds=2,
                baselines=("adamw",),
                reference="adamw",
                untrained_floor=False,
                progress=False,
                compiler_options=evaluation.FAST_COMPILE,
            )
            .tasks[0]
            .runs[name]
        )
        np.testing.assert_allclose(
            alone.train.metrics["train_loss"], runs[name].train.metrics["train_loss"], rtol=1e-4
        )


def test_schedule_free_is_evaluated_at_its_averaged_params():
    built = contenders.OptaxFamily(("schedule_free_adamw",)).build(jnp.zeros(2), None, num_steps=10)
    params = {"w": jnp.ones(3)}
    state = built.transform.init(params)
    grads = {"w": jnp.ones(3)}
    for _ in range(3):
        updates, state = built.transform.update(grads, state, params)
        params = jax.tree.map(jnp.add, params, updates)
    from optax import contrib

    expected = contrib.schedule_free_eval_params(state[0], params)
    np.testing.assert_allclose(built.eval_params(state, params)["w"], expected["w"])
    assert not np.allclose(expected["w"], params["w"])


def test_learned_contenders_of_one_rule_share_one_compiled_trainer():
    rule = lopt.get_optimizer("normalized")
    found = [
        contenders.untrained(rule, 0, "a"),
        contenders.untrained(rule, 1, "b"),
        *contenders.optax_contenders(["adamw", "sgdm"]),
    ]
    groups = contenders.group(found)
    assert [len(g.members) for g in groups] == [2, 2]
    thetas = groups[0].thetas()
    assert all(leaf.shape[0] == 2 for leaf in jax.tree.leaves(thetas))

    # The subject comes first in the list, but a batch's rows must not depend on which is the
    # subject: the same contenders in another order make the same groups, row for row.
    def labels(groups):
        return [[m.label for m in g.members] for g in groups]

    assert (
        labels(contenders.group(found[::-1])) == labels(groups) == [["a", "b"], ["adamw", "sgdm"]]
    )


def test_tie_rule():
    # Losses: within 2% tie, beyond it the lower wins; both below the floor tie however far apart.
    assert list(policy.outcome([1.0, 1.0, 1.0, 1e-5], [1.01, 1.1, 0.9, 1e-8])) == [
        0.5,
        1.0,
        0.0,
        0.5,
    ]
    # A diverged (non-finite) run loses to a finite one; two diverged runs tie.
    assert list(policy.outcome([np.inf, 1.0, np.nan], [1.0, np.inf, np.inf])) == [0.0, 1.0, 0.5]
    # Accuracies: higher is better, within half a point ties.
    assert list(policy.outcome([0.9, 0.9, 0.8], [0.897, 0.8, 0.9], higher_is_better=True)) == [
        0.5,
        1.0,
        0.0,
    ]
    assert "ties count 0.5" in policy.tie_rule()


def test_grid_edge_flag_fires_when_the_best_rate_is_at_an_end():
    # Bowl needs a large step: on a grid of small rates the largest is chosen, an edge.
    report = evaluation.evaluate(
        "adam",
        {"bowl": Bowl()},
        num_steps=10,
        seeds=1,
        baselines=("adam",),
        adam_grid=(1e-4, 1e-3, 1e-2),
        progress=False,
        compiler_options=evaluation.FAST_COMPILE,
    )
    run = report.tasks[0].runs["adam"]
    assert run.train.learning_rate == 1e-2
    assert run.at_grid_edge("train") and run.at_grid_edge("valid")
    saved = json.loads(report.to_json())
    assert saved["tasks"][0]["runs"]["adam"]["at_grid_edge"] == {"train": True, "valid": True}
    assert "1e-2 (edge)" in report.format_console()
    assert not policy.at_grid_edge((1e-3, 1e-2, 1e-1), 1e-2)


def test_cached_trainer_is_reused():
    found = contenders.optax_contenders(["adamw"])
    group = contenders.group(found)[0]
    (task,) = eval_tasks.resolve_tasks({"bowl": Bowl()})
    keys = jnp.stack([jax.random.key(0)])
    first = trainer.run_group(group, task, 5, keys, ())
    again = trainer.run_group(group, task, 5, keys, ())
    assert first.compile_seconds > 0 and again.compile_seconds < 0.01
    np.testing.assert_array_equal(first.losses, again.losses)


def test_unknown_contender_names_the_choices(capsys):
    with pytest.raises(ValueError, match="prodigy"):
        evaluation.evaluate("no-such", {"bowl": Bowl()}, num_steps=5)
    with pytest.raises(SystemExit):
        cli.main(["evaluate", "--optimizer", "no-such", "--suite", "tiny"])
    assert "schedule_free_adamw" in capsys.readouterr().err


@pytest.mark.slow
def test_a_tuning_free_contender_through_the_cli(tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["--optimizer", "cocob", "--suite", "tiny", "--steps", "10", "--seeds", "1"]
    argv += ["--horizons", "1", "--fast-compile", "--no-progress", "--no-plots", "--out", str(out)]
    assert cli.main(["evaluate", *argv]) == 0
    saved = json.loads((out / "report.json").read_text())
    assert saved["subject"] == "cocob"
    assert {"cocob", "adam", "sgdm"} <= set(saved["tasks"][0]["runs"])
