"""Config validation and the registries' errors: fast checks that build no program.

``config_flags.validate`` builds the real objects (engine config, outer settings, optimizer, task
families) and names the config key when one refuses a value; the registries of ``lopt`` and
``tasks`` raise errors of one shape for an unknown name.
"""

import pytest

import lopt
import tasks
from meta_train import config_flags


@pytest.mark.parametrize(
    "lookup",
    [
        lambda: lopt.get_optimizer("mpl"),
        lambda: lopt.registry.architecture_class("mpl"),
        lambda: tasks.get_family("quadratik"),
        lambda: tasks.get_suite("nope"),
    ],
)
def test_an_unknown_name_is_one_kind_of_error_in_both_registries(lookup):
    with pytest.raises((lopt.UnknownArchitectureError, tasks.UnknownNameError)) as caught:
        lookup()
    # Either registry's error is caught by `except KeyError` and by `except ValueError`, and its
    # message is not quoted the way KeyError quotes its argument.
    assert isinstance(caught.value, KeyError) and isinstance(caught.value, ValueError)
    assert str(caught.value).startswith("unknown ")


def test_lopt_unknown_architecture_error_catches_get_optimizer_and_load():
    with pytest.raises(lopt.UnknownArchitectureError, match="unknown optimizer architecture"):
        lopt.get_optimizer("mpl")
    # What lopt.load raises for an export of an unknown architecture is the same class, and an
    # ExportError too.
    assert issubclass(lopt.export.UnknownArchitectureError, lopt.UnknownArchitectureError)
    assert issubclass(lopt.export.UnknownArchitectureError, lopt.ExportError)


def test_the_trainer_config_chooses_from_the_engines_estimators():
    from meta_train.es import estimators

    assert config_flags.ESTIMATORS is estimators.ESTIMATORS


@pytest.mark.parametrize(
    "changes, named",
    [
        # The engine's rule: full ES needs window = horizon and no stagger.
        ({"estimator.name": "full_es", "estimator.window": 200}, ["'estimator.stagger'"]),
        ({"estimator.name": "full_es", "estimator.stagger": False}, ["'estimator.window'"]),
        ({"estimator.min_horizon": 300}, ["'estimator.min_horizon'", "T_min <= T_max"]),
        ({"estimator.sigma": -1.0}, ["'estimator.sigma'", "sigma must be > 0"]),
        ({"estimator.resample_every": 2}, ["'estimator.resample_every'", "gpes"]),
        ({"groups.digits.num_pairs": 0}, ["'groups.digits.num_pairs'", "positive integer"]),
        ({"outer.optimizer": "adamw"}, ["'outer.optimizer'", "adam, sgd, sgdm"]),
        ({"outer.schedule": "linear"}, ["'outer.schedule'", "constant or cosine"]),
        ({"outer.learning_rate": -1.0}, ["'outer.learning_rate'", "positive"]),
        ({"outer.warmup_steps": -1}, ["'outer.warmup_steps'", "at least 0"]),
        ({"meta_loss": "valid"}, ["'meta_loss'", "outer_valid"]),
        ({"meta_loss_scale": "final"}, ["'meta_loss_scale'", "initial"]),
        ({"meta_loss_train_weight": 2.0}, ["'meta_loss_train_weight'", "[0, 1]"]),
        ({"optimizer.architecture": "mpl"}, ["'optimizer.architecture'", "mlp"]),
        ({"optimizer.hyperparameters.width": 3}, ["'optimizer.hyperparameters'", "width"]),
        ({"groups.digits.augmentation": "layer"}, ["'groups.digits.augmentation'", "global"]),
        ({"eval.suite": "nope"}, ["'eval.suite'", "known suites"]),
        ({"num_outer_steps": float("nan")}, ["'num_outer_steps'", "finite"]),
    ],
)
def test_validation_names_the_config_key_of_the_object_that_refuses(changes, named):
    config = config_flags.load_config("default")
    for key, value in changes.items():
        *parents, leaf = key.split(".")
        node = config
        for part in parents:
            node = node[part]
        with node.ignore_type():
            node[leaf] = value
    with pytest.raises(config_flags.ConfigError) as caught:
        config_flags.validate(config, num_available_devices=1)
    for word in named:
        assert word in str(caught.value), (word, str(caught.value))


def test_every_shipped_config_is_valid():
    for name in config_flags.config_names():
        config_flags.validate(config_flags.load_config(name), num_available_devices=1)
