"""The "generalization" held-out suite: size, coverage, and held out from meta-training."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from meta_train import config_flags
from tasks import registry

SUITE = "generalization"
# Options of a dataset, not of the network: a task that changes only these is the same model.
DATA_OPTIONS = ("train_size", "label_noise")


def meta_training_groups() -> list[tuple[str, dict]]:
    """(family, overrides) of every task group of every shipped meta-training config (the
    ``pretrained*`` configs behind the shipped optimizers among them)."""
    groups = []
    for name in config_flags.config_names():
        for group in config_flags.load_config(name).groups.values():
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
    assert 12 <= len(entries) <= 16
    assert len({entry.name for entry in entries}) == len(entries)
    # A few hundred steps each: the benchmark runs every task at 1x and 2x for ~20 contenders.
    assert all(200 <= entry.num_steps <= 500 for entry in entries)
    assert all(entry.shift for entry in entries)


def test_suite_covers_the_model_kinds_and_regimes():
    entries = registry.suite_entries(SUITE)
    families = {entry.family for entry in entries}
    assert {"lm_markov_transformer", "resmlp_mnist1d", "lm_markov", "conv_digits"} <= families
    shifts = " | ".join(entry.shift for entry in entries)
    for shift in ("width (4x)", "width (16x)", "depth", "activation", "batch size"):
        assert shift in shifts, shift
    # Overfitting: a small training set; irreducible noise: redrawn labels (or a mixture).
    overfit = [e for e in entries if e.shift.startswith("overfit:")]
    noisy = [e for e in entries if e.shift.startswith("noisy:")]
    assert len(overfit) >= 2 and all(e.overrides.get("train_size") for e in overfit)
    assert len(noisy) >= 2 and sum(bool(e.overrides.get("label_noise")) for e in noisy) >= 2
    for entry in entries:
        assert ("train_size" in entry.overrides) == (entry in overfit), entry.name
        assert ("label_noise" in entry.overrides) <= (entry in noisy), entry.name


def test_no_task_is_a_meta_training_group():
    """Every task differs from every group of every shipped config, and in its model or training
    options, not only in its data options (a net meta-trained on 20% label noise is not held out
    by testing it on 30%)."""
    groups = meta_training_groups()
    assert ("mlp_mnist1d", {"label_noise": 0.2}) in groups  # pretrained_v2's are among them

    def model(family: str, overrides: dict) -> tuple:
        kept = {k: v for k, v in overrides.items() if k not in DATA_OPTIONS}
        return registry.static_configuration(family, kept)

    exact = {registry.static_configuration(f, o): (f, o) for f, o in groups}
    models = {model(f, o): (f, o) for f, o in groups}
    for entry in registry.suite_entries(SUITE):
        task = registry.static_configuration(entry.family, entry.overrides)
        assert task not in exact, (entry.name, exact.get(task))
        assert model(entry.family, entry.overrides) not in models, (
            entry.name,
            models.get(model(entry.family, entry.overrides)),
        )


def test_listing_shows_the_suite_and_new_families():
    listing = registry.format_listing()
    for name in (SUITE, "mlp_gmm", "lm_markov_transformer", "resmlp_mnist1d"):
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


def test_the_ablation_tasks_are_in_the_suite():
    from benchmarks import ablations

    names = {entry.name for entry in registry.suite_entries("generalization")}
    assert set(ablations.TASKS) <= names, set(ablations.TASKS) - names
