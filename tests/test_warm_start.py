"""``init_from``: a run starts from a shipped or exported theta (meta_train.warm_start)."""

import dataclasses

import jax
import numpy as np
import pytest

import lopt
from meta_train import config_flags, warm_start

SHIPPED = "normalized-v1"


def _shipped_theta():
    return lopt.load_optimizer(lopt.pretrained_path(SHIPPED))[:2]


def test_warm_start_copies_every_entry_and_keeps_new_ones_at_init():
    shipped_optimizer, shipped_theta = _shipped_theta()
    gain = dataclasses.replace(shipped_optimizer, step_gain=True)
    initial = gain.init_meta_params(jax.random.key(7))
    theta, fresh = warm_start.warm_start(SHIPPED, gain, initial)
    assert fresh == ["['gain_exponent']"]
    assert float(theta["gain_exponent"]) == 0.0
    for key in shipped_theta:
        jax.tree.map(np.testing.assert_array_equal, theta[key], shipped_theta[key])
    # The initial theta was random: the copy changed it (the test can fail).
    assert not np.array_equal(initial["layer_0"]["w"], theta["layer_0"]["w"])


def test_warm_start_from_an_export_directory(tmp_path):
    optimizer, theta = _shipped_theta()
    lopt.save(tmp_path / "export", optimizer, theta)
    merged, fresh = warm_start.warm_start(
        str(tmp_path / "export"), optimizer, optimizer.init_meta_params(jax.random.key(0))
    )
    assert fresh == []
    jax.tree.map(np.testing.assert_array_equal, merged, theta)


def test_warm_start_refuses_what_does_not_fit():
    shipped_optimizer, _ = _shipped_theta()
    wider = dataclasses.replace(shipped_optimizer, hidden_sizes=(16, 8))
    with pytest.raises(warm_start.WarmStartError, match=r"layer_0.*do not fit|do not fit"):
        warm_start.warm_start(SHIPPED, wider, wider.init_meta_params(jax.random.key(0)))
    mlp = lopt.get_optimizer("mlp")
    with pytest.raises(warm_start.WarmStartError, match="architecture"):
        warm_start.warm_start(SHIPPED, mlp, mlp.init_meta_params(jax.random.key(0)))
    with pytest.raises(warm_start.WarmStartError, match="normalized-v1"):
        warm_start.source_path("no-such-optimizer")


def test_config_validation_names_init_from():
    config = config_flags.load_config("pretrained")
    config.init_from = SHIPPED
    config_flags.validate(config, num_available_devices=1)
    config.init_from = "no-such-optimizer"
    with pytest.raises(config_flags.ConfigError, match="'init_from'"):
        config_flags.validate(config, num_available_devices=1)
    config.init_from = SHIPPED
    config.optimizer.hyperparameters.hidden_sizes = (4,)
    with pytest.raises(config_flags.ConfigError, match=r"'init_from'.*do not fit"):
        config_flags.validate(config, num_available_devices=1)
