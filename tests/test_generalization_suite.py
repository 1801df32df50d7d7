"""The "generalization" held-out suite: size, coverage, and held out from meta-training."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from meta_train import config_flags
from tasks import registry

SUITE = "generalization"
# The meta-training groups of meta_train/configs/pretrained.py as planned: (family, overrides).
PLANNED_GROUPS = (
    ("mlp_digits", {}),
    ("mlp_digits", {"hidden": (64,)}),
    ("mlp_mnist1d", {}),
    ("mlp_gmm", {}),
    ("conv_digits", {}),
)


def meta_training_groups() -> list[tuple[str, dict]]:
    """The planned groups, and those of the shipped ``pretrained`` config once it exists."""
    groups = list(PLANNED_GROUPS)
    if "pretrained" in config_flags.config_names():
        config = config_flags.load_config("pretrained")
        for group in config.groups.values():
            groups.append((group.family, dict(group.get("overrides", {}))))
    return groups


def test_static_configuration_identifies_the_problem():
    digits = registry.static_configuration("mlp_digits")
    assert registry.static_configuration("mlp_tabular", {"dataset": "digits"}) == digits
    assert registry.static_configuration("mlp_digits", {"hidden": [32, 32]}) == digits
    assert registry.static_configuration("mlp_digits", {"init_scale_range": (0.1, 10)}) == digits
    assert registry.static_configuration("mlp_digits", {"batch_size": 32}) != digits
    assert registry.static_configuration("mlp_mnist1d") != digits
    assert registry.static_configuration("conv_digits") != digits
    with pytest.raises(TypeError, match="no option 'widths'"):
        registry.static_configuration("mlp_digits", {"widths": (8,)})


def test_suite_size_and_horizons():
    entries = registry.suite_entries(SUITE)
    assert len(entries) >= 12
    assert len({entry.name for entry in entries}) == len(entries)
    assert all(entry.num_steps == 500 for entry in entries)


def test_suite_covers_the_shifts():
    entries = registry.suite_entries(SUITE)
    shifts = " | ".join(entry.shift for entry in entries)
    for shift in ("width (4x)", "width (16x)", "depth", "activation", "conv", "language model"):
        assert shift in shifts, shift
    families = {entry.family for entry in entries}
    assert {"mlp_tabular", "lm_markov", "noisy_quadratic", "conv_digits"} <= families
    overrides = [entry.overrides for entry in entries]
    assert {"hidden": (512, 512)} in overrides and {"cell": "gru"} in overrides
    assert {"activation": "gelu"} in overrides and {"activation": "tanh"} in overrides


def test_no_task_is_a_meta_training_group():
    groups = {registry.static_configuration(f, o): (f, o) for f, o in meta_training_groups()}
    for entry in registry.suite_entries(SUITE):
        task = registry.static_configuration(entry.family, entry.overrides)
        assert task not in groups, (entry.name, groups.get(task))


def test_listing_shows_the_suite_and_new_families():
    listing = registry.format_listing()
    for name in (SUITE, "mlp_gmm", "mlp_tabular"):
        assert name in listing
    for entry in registry.suite_entries(SUITE):
        assert entry.name in listing


@pytest.mark.slow
def test_every_task_builds_and_starts_at_a_finite_loss():
    for task in registry.get_suite(SUITE):
        instance = task.family.task(task.config)
        params = instance.init(jax.random.key(0))
        loss = jax.jit(instance.loss)(params, jax.random.key(1))
        metrics = instance.evaluate(params)
        assert np.isfinite(float(loss)) and np.isfinite(float(metrics["loss"])), task.name
