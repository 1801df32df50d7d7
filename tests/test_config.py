"""Config validation and the registries' errors: fast checks that build no program.

``config_flags.validate`` builds the real objects (engine config, outer settings, optimizer, task
families), returns them as the settings training uses, and names the config key when one refuses a
value (each object built from its keys, so the key is known by construction); the registries of
``lopt`` and ``tasks`` raise errors of one shape for an unknown name.
"""

import copy

import pytest

import lopt
import tasks
from meta_train import config_flags, outer
from meta_train.es import engine


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


def _changed(changes: dict) -> config_flags.ConfigError:
    """The error ``validate`` raises for the default config with ``changes``."""
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
    return caught.value


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
    message = str(_changed(changes))
    for word in named:
        assert word in message, (word, message)


def test_every_shipped_config_is_valid():
    for name in config_flags.config_names():
        config_flags.validate(config_flags.load_config(name), num_available_devices=1)


@pytest.mark.parametrize(
    "changes, keys",
    [
        # A value wrong by itself: its key alone, also beside another wrong value of the object.
        ({"estimator.sigma": -1.0}, "'estimator.sigma'"),
        ({"estimator.sigma": -1.0, "estimator.window": 0}, "'estimator.window'"),
        ({"outer.clip_norm": 0.0, "outer.warmup_steps": -1}, "'outer.clip_norm'"),
        ({"optimizer.learning_rate": 0.0}, "'optimizer.learning_rate'"),
        # A rule between keys: exactly the keys of the rule, the values of the config.
        (
            {"estimator.name": "full_es", "estimator.window": 200},
            "'estimator.name', 'estimator.window', 'estimator.horizon', 'estimator.stagger'",
        ),
        ({"estimator.resample_every": 3}, "'estimator.name', 'estimator.resample_every'"),
        (
            {"meta_loss": "train", "meta_loss_train_weight": 0.5},
            "'meta_loss', 'meta_loss_train_weight'",
        ),
    ],
)
def test_the_keys_named_are_those_whose_values_the_object_refuses(changes, keys):
    message = str(_changed(changes))
    assert message.startswith(f"config key{'s' * (',' in keys)} {keys}: "), message


def test_the_rule_between_keys_is_told_with_the_configs_values():
    message = str(_changed({"estimator.name": "full_es", "estimator.stagger": False}))
    assert "(got horizon=200, window=10, stagger=False)" in message


def test_validate_returns_what_training_uses():
    """The settings hold the built objects; ``train.build_groups`` only adds each family."""
    from meta_train import train

    config = config_flags.load_config("default")
    config.estimator.min_horizon = 50
    settings = config_flags.validate(config, num_available_devices=4)
    assert isinstance(settings.optimizer, lopt.LearnedOptimizer)
    assert settings.optimizer.hyperparameters() == dict(config.optimizer.hyperparameters)
    fields = lopt.StepSize._fields
    assert settings.step_size == lopt.StepSize(*(config.optimizer[field] for field in fields))
    assert settings.outer == outer.OuterSettings(
        "adam", 1e-3, 1.0, "cosine", 50, num_steps=config.num_outer_steps
    )
    (group,) = settings.groups
    assert group.engine == engine.EngineConfig(
        num_pairs=16, window=10, sigma=0.01, horizon=(50, 200), pairs_per_chunk=1
    )
    assert (group.name, group.family, group.weight) == ("digits", "mlp_digits", 1.0)
    assert (group.augmentation.level, group.augmentation.scale_range) == ("global", (0.3, 3.0))
    assert settings.system.meta_loss == "outer_valid" and settings.num_devices == 4

    (built,) = train.build_groups(settings._replace(groups=(group._replace(family="quadratic"),)))
    assert built.engine_config is group.engine and built.weight == group.weight
    assert built.system.optimizer is settings.optimizer
    assert built.system.step_size is settings.step_size
    assert built.system.family.level == "global" and built.system.family.base is not None
    assert built.system.meta_loss == "outer_valid"


def test_the_default_config_declares_every_key_of_every_shipped_config():
    """``configs/default.get_config()`` is the schema: no shipped config has a key it lacks (the
    free groups aside), and ``load_config`` refuses a config that lacks one of its keys."""
    schema = config_flags.load_config(config_flags.SCHEMA)
    for name in config_flags.config_names():
        assert config_flags._missing_keys(schema, config_flags.load_config(name)) == [], name
    extra = config_flags.load_config("pes")
    extra.estimator.temperature = 1.0
    assert config_flags._missing_keys(schema, extra) == ["estimator.temperature"]


def test_a_run_stored_before_a_key_existed_still_resumes():
    current = config_flags.canonical(config_flags.load_config("pretrained_v4"))
    stored = copy.deepcopy(current)
    del stored["optimizer"]["hyperparameters"]["orthogonalize"]  # as written before the option
    del stored["estimator"]["shaping"]
    assert config_flags.differences(stored, current) == []
    # The option switched on is a different run; so is any other changed value.
    switched = copy.deepcopy(current)
    switched["optimizer"]["hyperparameters"]["orthogonalize"] = True
    switched["estimator"]["shaping"] = "sign"
    assert config_flags.differences(stored, switched) == [
        "estimator.shaping: '<absent>' -> 'sign'",
        "optimizer.hyperparameters.orthogonalize: '<absent>' -> True",
    ]
    # A rule's own defaults count, not the schema's (which are the normalized rule's).
    mlp = config_flags.canonical(config_flags.load_config("ablation_mlp"))
    stored_mlp = copy.deepcopy(mlp)
    del stored_mlp["optimizer"]["hyperparameters"]["use_loss"]  # the MLP rule's default, False
    assert config_flags.differences(stored_mlp, mlp) == []
    del stored_mlp["optimizer"]["hyperparameters"]["base"]  # its default is "none", not "adam"
    assert config_flags.differences(stored_mlp, mlp) == [
        "optimizer.hyperparameters.base: '<absent>' -> 'adam'"
    ]
    stored["optimizer"]["hyperparameters"]["rms_decay"] = 0.9
    assert config_flags.differences(stored, current) == [
        "optimizer.hyperparameters.rms_decay: 0.9 -> 0.95"
    ]
