"""benchmarks.compare_versions: paired comparison of two contenders of a recorded benchmark."""

import numpy as np

from benchmarks import compare_versions


def _record(ours_scale: float, noise: float) -> dict:
    rng = np.random.default_rng(0)
    tasks = []
    for _ in range(6):
        base = rng.uniform(0.1, 2.0, size=3)
        runs = {}
        for name, scale in (("a", ours_scale), ("b", 1.0)):
            losses = (base * scale * np.exp(noise * rng.normal(size=3))).tolist()
            criteria = {"train": {"metrics": {"train_loss": losses}}}
            criteria["valid"] = {"metrics": {"test_loss": losses}}
            runs[name] = {"by_criterion": criteria}
        tasks.append({"horizon": 1.0, "runs": runs})
    return {"reports": {"suite": {"tasks": tasks}}}


def test_a_contender_half_the_loss_is_lower_on_every_task():
    result = compare_versions.compare(_record(0.5, 0.01), "a", "b", "test_loss")
    assert (result["lower"], result["higher"], result["unclear"]) == (6, 0, 0)
    assert abs(result["ratio_iqm"]["value"] - 0.5) < 0.02


def test_noise_alone_is_unclear_not_a_difference():
    result = compare_versions.compare(_record(1.0, 0.01), "a", "b", "train_loss")
    assert result["lower"] + result["higher"] <= 1  # 95% intervals: about 0.3 of 6 by chance
    assert result["unclear"] >= 5
