"""``meta_train_throughput --pretrained``: the recipe it measures (the one recorded beside the
default shipped optimizer) and ``breakdown``, the parts of a step from the medians of its ablated
variants."""

import pathlib
import sys

import pytest

import lopt
from lopt import shipped
from meta_train import config_flags

ROOT = str(pathlib.Path(__file__).resolve().parents[1])
if ROOT not in sys.path:  # benchmarks/ is a folder of the repository, not an installed package
    sys.path.insert(0, ROOT)

from benchmarks import meta_train_throughput  # noqa: E402


def test_breakdown_is_differences_of_microseconds_per_step():
    # Rates (particle-steps/s) chosen as 1e6 / us, so every part is a difference of round us.
    us = {
        "engine, chunks of 1": 0.4,
        "engine, all pairs at once": 1.2,
        "unroll: adamw": 0.3,
        "unroll: rule": 1.0,
        "unroll: sgd": 0.25,
        "unroll: sgd, no augmentation": 0.2,
        "unroll: sgd, fixed batch": 0.15,
    }
    medians = {f"{name} (2 dev)": 1e6 / value for name, value in us.items()}
    medians["unroll: sgd (1 dev)"] = 1.0  # another mesh size is ignored
    parts = meta_train_throughput.breakdown(medians, 2)
    expected = {
        "engine_as_meta_train_runs_it": 0.4,
        "engine_all_pairs_at_once": 1.2,
        "adamw_ceiling": 0.3,
        "forward_backward_and_data": 0.25,
        "of_which_data_sampling": 0.1,
        "of_which_augmentation": 0.05,
        "rule_update_vectorised": 0.75,
        "adamw_update": 0.05,
        "es_overhead_vectorised": 0.2,
    }
    assert parts == pytest.approx(expected)


def test_breakdown_without_the_vectorised_engine_has_no_es_overhead():
    names = [
        "engine, chunks of 1",
        "unroll: adamw",
        "unroll: rule",
        "unroll: sgd",
        "unroll: sgd, no augmentation",
        "unroll: sgd, fixed batch",
    ]
    parts = meta_train_throughput.breakdown({f"{n} (1 dev)": 1.0 for n in names}, 1)
    assert "es_overhead_vectorised" not in parts and "engine_all_pairs_at_once" not in parts


def test_pretrained_mode_measures_the_recipe_that_trained_the_default():
    recipe = meta_train_throughput.shipped_recipe(shipped.DEFAULT_PRETRAINED)
    rule = config_flags.validate(recipe).optimizer
    assert rule == lopt.load_optimizer(lopt.pretrained_path())[0]


def test_pretrained_mode_names_the_shipped_versions_on_an_unknown_one(capsys):
    with pytest.raises(SystemExit) as exit_info:
        meta_train_throughput.main(["--pretrained", "normalized-v0"])
    assert exit_info.value.code == 2
    assert "normalized-v8" in capsys.readouterr().err


def test_breakdown_takes_the_orthogonalization_from_its_ablation():
    us = {"engine": 3.0, "unroll: adamw": 1.0, "unroll: sgd": 0.5, "unroll: rule": 2.5}
    us |= {"unroll: sgd, no augmentation": 0.5, "unroll: sgd, fixed batch": 0.4}
    us["unroll: rule, no orthogonalization"] = 0.75
    parts = meta_train_throughput.breakdown({f"{n} (2 dev)": 1e6 / s for n, s in us.items()}, 2)
    assert parts["rule_update_vectorised"] == pytest.approx(2.0)
    assert parts["of_which_orthogonalization"] == pytest.approx(1.75)


def test_breakdown_takes_the_held_out_meta_loss_from_its_ablation():
    us = {"engine, chunks of 1": 3.0, "engine, training-loss meta-loss, chunks of 1": 2.25}
    us |= {"unroll: adamw": 1.0, "unroll: sgd": 0.5, "unroll: rule": 2.0}
    us |= {"unroll: sgd, no augmentation": 0.5, "unroll: sgd, fixed batch": 0.4}
    parts = meta_train_throughput.breakdown({f"{n} (2 dev)": 1e6 / s for n, s in us.items()}, 2)
    assert parts["engine_as_meta_train_runs_it"] == pytest.approx(3.0)
    assert parts["of_which_held_out_meta_loss"] == pytest.approx(0.75)
