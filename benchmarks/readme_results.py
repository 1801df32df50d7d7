"""The measured figures of ``README.md`` and ``docs/results.md``, generated from the result JSONs.

    python -m benchmarks.readme_results          # check both documents against the JSONs
    python -m benchmarks.readme_results --write  # refresh their tables and figures in place

Two kinds of quotation, each belonging to one ``Document``:

* tables, rendered whole between ``<!-- generated: NAME -->`` and ``<!-- /generated -->``;
* figures in prose: a ``Figure`` is a phrase with ``{...}`` format fields (the phrase's own words
  around them, white space matching any line break) and the JSON values that fill them. A field
  with the spec ``s`` holds a word (a contender's name, ``9.2e-7``), any other a number. The phrase
  must stand in its document exactly once; ``--write`` replaces only the fields, so the prose
  around them stays as written.

``tests/test_readme_figures.py`` checks that every table and every figure of both documents is the
one its JSON gives, so a rerun of a benchmark shows up as a failing test until they follow.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import re
import string
import sys
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import numpy as np

from lopt import shipped

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(ROOT, "README.md")
RESULTS_MD = os.path.join(ROOT, "docs", "results.md")
RESULTS = os.path.join(ROOT, "benchmarks", "results")
GENERALIZATION = os.path.join(RESULTS, "generalization", "generalization.json")
ABLATIONS = os.path.join(RESULTS, "ablations", "ablations.json")
OPTIMIZER_STEP = os.path.join(RESULTS, "optimizer_step.json")
THROUGHPUT = os.path.join(RESULTS, "meta_train_throughput.json")
THROUGHPUT_PRETRAINED = os.path.join(RESULTS, "meta_train_throughput_pretrained.json")
SIGNAL_TO_NOISE = os.path.join(RESULTS, "es_signal_to_noise.json")
VARIANCE = os.path.join(RESULTS, "variance.json")
VARIANCE_SEED = os.path.join(RESULTS, "paper", "variance_independent_seed{}.json")
DEFAULT_CONFIG_RUNS = os.path.join(RESULTS, "default_config_runs.json")
DEFAULT_ARCHITECTURE = os.path.join(RESULTS, "default_config_architecture.json")
PRETRAINED = os.path.join(ROOT, "lopt", "weights", "normalized-v1", "training.json")
PRETRAINED_V7 = os.path.join(ROOT, "lopt", "weights", "normalized-v7", "training.json")
PRETRAINED_V8 = os.path.join(ROOT, "lopt", "weights", "normalized-v8", "training.json")
WEIGHT_DECAY_SWEEP_V7 = os.path.join(RESULTS, "weight_decay_sweep", "normalized-v7.json")

ABLATION_DESCRIPTIONS = {
    "reference": "reference (the recipe)",
    "mlp": "mlp: the per-parameter MLP rule with an Adam base step instead",
    "no_augmentation": "no_augmentation: no reparameterization",
    "one_family": "one_family: the digits MLP alone (same 40 pairs)",
    "fixed_horizon": "fixed_horizon: one horizon of 200 instead of log-uniform [50, 500]",
    "step_gain": "step_gain: the learned per-tensor gain that lets the step shrink",
    "weight_decay": "weight_decay: decoupled, 1e-4",
    "orthogonalize": "orthogonalize: Newton-Schulz directions for matrices",
    "adam_vectors": "adam_vectors: Adam's direction (beta2 0.95) for biases and scales",
    "extra_features": "extra_features: clipped g/sqrt(v), rsqrt(v), Adafactor-factored g/sqrt(v)",
}
METRICS = ("train_loss", "test_loss", "test_accuracy")


@functools.cache
def load(path: str) -> Any:
    with open(path) as file:
        return json.load(file)


def num(value: float | None) -> str:
    """Two significant digits below 1, three from 1 up; no trailing zeros (``1``, ``0.5``);
    exponents without padding (``9.2e-7``)."""
    if value is None or not np.isfinite(value):
        return "n/a" if value is None else str(value)
    text = f"{value:.{2 if abs(value) < 1 else 3}g}"
    if "e" in text:
        mantissa, exponent = text.split("e")
        return f"{mantissa}e{int(exponent)}"
    return text.rstrip("0").rstrip(".") if "." in text else text


def estimate(entry: dict, tasks: int, suffix: str = "") -> str:
    """``value [low, high]`` (the interval left out when it is one point), ``(n=...)`` when fewer
    than all tasks count."""
    if not entry or entry.get("value") is None:
        return "n/a"
    text = num(entry["value"]) + suffix
    if not entry["low"] == entry["high"] == entry["value"]:
        text += f" [{num(entry['low'])}, {num(entry['high'])}]"
    if entry["count"] != tasks:
        text += f" (n={entry['count']})"
    return text


def _table(header: list[str], rows: list[list[str]]) -> str:
    line = lambda cells: "| " + " | ".join(cells) + " |"
    return "\n".join([line(header), line(["---"] * len(header)), *map(line, rows)])


def _subject() -> str:
    """The optimizer the generalization benchmark was run for (its other horizons are its)."""
    return load(GENERALIZATION)["subject"]


def _row(horizon: str, contender: str | None = None) -> dict:
    contender = contender or _subject()
    rows = load(GENERALIZATION)["headline"]
    for row in rows:
        if row["contender"] == contender and row["horizon"] == horizon:
            return row
    have = sorted({row["contender"] for row in rows})
    raise KeyError(
        f"{os.path.relpath(GENERALIZATION, ROOT)} has no {contender!r} at {horizon} (it has "
        f"{have}): rewrite the phrase that quotes it"
    )


def _wtl(counts: dict) -> str:
    """``wins/ties/losses (win rate [interval])``: a tie counts half in the rate."""
    text = f"{counts['wins']}/{counts['ties']}/{counts['losses']}"
    rate = counts.get("win_rate")
    return text if rate is None else f"{text} ({estimate(rate, rate['count'])})"


GENERALIZATION_HEADER = [
    "vs tuned AdamW: train loss W/T/L (win rate)",
    "test loss",
    "test accuracy",
    "vs best tuning-free, train / test / acc",
    "train loss / AdamW's, IQM",
    "test loss / AdamW's, IQM",
    "speed-up IQM",
    "diverged runs",
]


def _generalization_cells(row: dict) -> list[str]:
    peer = row["vs_best_tuning_free"]
    return [
        *(_wtl(row["vs_reference"][m]) for m in METRICS),
        "-"
        if peer is None
        else " / ".join(
            f"{peer[m]['wins']}/{peer[m]['ties']}/{peer[m]['losses']}" for m in METRICS
        ),
        estimate(row["normalized_train_loss_iqm"], row["tasks"]),
        estimate(row["normalized_test_loss_iqm"], row["tasks"]),
        estimate(row["speedup_iqm"], row["tasks"], "x"),
        row["diverged_runs"],
    ]


def headline_table() -> str:
    """Every contender of ``python -m benchmarks.generalization`` at 1x, in the record's order,
    against tuned AdamW and the best tuning-free peer of each task."""
    rows = [row for row in load(GENERALIZATION)["headline"] if row["horizon"] == "1x"]
    table = [[row["contender"], str(row["tasks"]), *_generalization_cells(row)] for row in rows]
    return _table(["optimizer", "tasks", *GENERALIZATION_HEADER], table)


def horizons_table() -> str:
    """The benchmark's subject at every horizon (1x included, for comparison)."""
    table = []
    for row in load(GENERALIZATION)["headline"]:
        if row["contender"] != _subject():
            continue
        label = row["horizon"] + (f" ({row['steps']})" if row.get("steps") else "")
        table.append([row["contender"], label, str(row["tasks"]), *_generalization_cells(row)])
    return _table(["optimizer", "horizon", "tasks", *GENERALIZATION_HEADER], table)


def _ablation(name: str) -> dict:
    (row,) = load(ABLATIONS)["results"][name]["headline"]
    return row


def ablations_table() -> str:
    table = []
    for name in load(ABLATIONS)["results"]:
        row = _ablation(name)
        table.append(
            [
                ABLATION_DESCRIPTIONS.get(name, name),
                num(row["win_rate_train_loss"]["value"]),
                num(row["win_rate_test_loss"]["value"]),
                num(row["normalized_train_loss_iqm"]["value"]),
                num(row["normalized_test_loss_iqm"]["value"]),
                num(row["speedup_iqm"]["value"]) + "x",
                row["diverged_runs"],
            ]
        )
    header = [
        "ablation",
        "better than tuned Adam, train loss",
        "better, test loss",
        "train loss / Adam's, IQM",
        "test loss / Adam's, IQM",
        "speed-up IQM",
        "diverged",
    ]
    return _table(header, table)


def _snr_cell(entry: dict) -> str:
    """``SNR per pair +- se; pairs for a cosine of 0.5 [10-90% interval]``."""
    low, high = entry["pairs_for_cosine_half_interval"]
    count = lambda value: f"{value:.0f}"  # "inf" where no signal is resolved
    pairs = f"{count(entry['pairs_for_cosine_half'])} [{count(low)}, {count(high)}]"
    return f"{num(entry['snr_per_pair'])} +- {num(entry['snr_per_pair_se'])}; {pairs}"


def signal_to_noise_table() -> str:
    """Per task group (and combined), per window length K: one pair's SNR and the pairs an
    estimate needs for a cosine of 0.5 with another (``benchmarks/es_signal_to_noise.py``)."""
    results = load(SIGNAL_TO_NOISE)["results"]
    windows = sorted(results, key=int)
    groups = list(results[windows[0]])
    table = [[group, *(_snr_cell(results[k][group]) for k in windows)] for group in groups]
    return _table(["group", *(f"K = {k}" for k in windows)], table)


class Figure(NamedTuple):
    """A phrase with format fields, and the values (from one JSON) that fill them."""

    source: str
    phrase: str
    values: Callable[[], Sequence[Any]]

    def rendered(self) -> list[str]:
        fields = [
            spec for _, name, spec, _ in string.Formatter().parse(self.phrase) if name is not None
        ]
        values = self.values()
        assert len(fields) == len(values), (self.phrase, values)
        return [format(value, spec) for spec, value in zip(fields, values, strict=True)]

    def pattern(self) -> re.Pattern:
        parts = []
        for literal, name, spec, _ in string.Formatter().parse(self.phrase):
            parts.append(r"\s+".join(re.escape(word) for word in re.split(r"\s+", literal)))
            if name is None:
                continue
            if spec == "s":
                parts.append(r"([A-Za-z0-9](?:[\w.+-]*\w)?)")
            else:
                parts.append(r"(-?[0-9][0-9.,]*[0-9]%?|[0-9]%?)")
        return re.compile("".join(parts))


def _win(horizon: str, criterion: str = "train", contender: str | None = None) -> float:
    return _row(horizon, contender)[f"win_rate_{criterion}_loss"]["value"]


def _step(name: str) -> float:
    return load(OPTIMIZER_STEP)["ratios"][name]


def _variance(system: str, estimator: str, key: str = "variance_ratio") -> list[float]:
    rows = load(VARIANCE)["rows"]
    by_ratio = {
        r["T_over_K"]: r for r in rows if r["system"] == system and r["estimator"] == estimator
    }
    return [by_ratio[ratio][key] for ratio in sorted(by_ratio)]


def _pes_independent() -> list[float]:
    """PES at T/K = 1 (no SE: it equals ES-Single's), 10, 100, 1000 with SEs, then theory."""
    ratios = _variance("independent", "pes")
    errors = _variance("independent", "pes", "variance_ratio_se")
    pairs = [value for pair in zip(ratios[1:], errors[1:], strict=True) for value in pair]
    return [ratios[0], *pairs, *_variance("independent", "pes", "theory")]


def _seed_variance(seed: int, ratio: int = 10) -> float:
    rows = load(VARIANCE_SEED.format(seed))["rows"]
    return next(
        r["variance_ratio"] for r in rows if r["estimator"] == "pes" and r["T_over_K"] == ratio
    )


def _minutes_and_tenths(path: str) -> tuple[float, float, float]:
    """A shipped version's logged meta-training minutes and its meta-loss tenths."""
    return (load(path)["budget"]["logged_wall_seconds"] / 60, *_meta_loss_tenths(path))


def _meta_loss_tenths(path: str = PRETRAINED) -> tuple[float, float]:
    """A shipped version's mean meta-loss over the first and the last tenth of its run."""
    losses = np.asarray(load(path)["meta_loss_curve"]["meta_loss"], dtype=float)
    tenth = max(len(losses) // 10, 1)
    return float(losses[:tenth].mean()), float(losses[-tenth:].mean())


def _throughput(prefix: str, path: str = THROUGHPUT) -> float:
    results = load(path)["results"]
    return next(v["particle_steps_per_s"] for k, v in results.items() if k.startswith(prefix))


def _breakdown(key: str) -> float:
    """Microseconds per particle-step of the shipped recipe's throughput run (2 devices)."""
    return load(THROUGHPUT_PRETRAINED)["breakdown_us_per_particle_step"]["2 dev"][key]


def _default_run(meta_loss: str) -> dict:
    return load(DEFAULT_CONFIG_RUNS)["runs"][f"meta_loss_{meta_loss}"]


def _architecture_run(name: str) -> dict:
    return load(DEFAULT_ARCHITECTURE)["runs"][f"cmp_{name}"]


def _wall_and_tenths(run: dict) -> tuple[float, float, float]:
    """A run's outer-step wall seconds and its meta-loss over the first and the last tenth."""
    return (
        run["outer_steps_wall_seconds"],
        run["meta_loss_first_tenth"],
        run["meta_loss_last_tenth"],
    )


def _default_test_losses(meta_loss: str) -> list[float]:
    tasks = _default_run(meta_loss)["tasks"].values()
    return [task["meta-trained"]["test_loss"] for task in tasks]


def _held_out_train_losses(name: str, contender: str) -> list[str]:
    """``contender``'s final train loss on each held-out task of an architecture run, as quoted."""
    tasks = _architecture_run(name)["tasks"]
    return [num(task[contender]["train_loss"]) for task in tasks.values()]


def _better_than_adam(name: str) -> tuple[int, int]:
    """On how many of an architecture run's held-out tasks its final train loss is below Adam's."""
    tasks = _architecture_run(name)["tasks"].values()
    better = sum(task["meta-trained"]["train_loss"] < task["adam"]["train_loss"] for task in tasks)
    return better, len(tasks)


V1, V2, V3, V4, V5, V6, V7, V8 = (f"normalized-v{n}" for n in range(1, 9))


def _counts(metric: str, contender: str | None = None, horizon: str = "1x") -> tuple[int, int, int]:
    """Wins, ties and losses against tuned AdamW at ``horizon``."""
    counts = _row(horizon, contender)["vs_reference"][metric]
    return counts["wins"], counts["ties"], counts["losses"]


def _tuning_free_train_wins() -> tuple[int, int]:
    """The most training-loss wins against tuned AdamW of a tuning-free optimizer other than Muon
    (a row with no comparison against the tuning-free peers is one of them), and Muon's."""
    rows = [row for row in load(GENERALIZATION)["headline"] if row["horizon"] == "1x"]
    peers = [row for row in rows if row["vs_best_tuning_free"] is None]
    wins = {row["contender"]: row["vs_reference"]["train_loss"]["wins"] for row in peers}
    muon = wins.pop("muon")
    return max(wins.values()), muon


def _beside_previous(ours: str, theirs: str) -> tuple:
    """At 1x against tuned AdamW: ``ours``' train-loss W/T/L and win rate, ``theirs``' win rate,
    the same for test loss, and ``ours``' accuracy W/T/L."""
    return (
        *_counts("train_loss", ours),
        _win("1x", contender=ours),
        _win("1x", contender=theirs),
        *_counts("test_loss", ours),
        _win("1x", "test", ours),
        _win("1x", "test", theirs),
        *_counts("test_accuracy", ours),
    )


def _best_at_1x(key: str) -> float:
    rows = [row for row in load(GENERALIZATION)["headline"] if row["horizon"] == "1x"]
    return max(row[key]["value"] for row in rows if row[key]["value"] is not None)


def _paired(ours: str, theirs: str, metric: str) -> tuple:
    """Paired by seed at 1x (``compare_versions``): the tasks where ``ours``' ``metric`` is lower
    and higher than ``theirs``', and the ratio's IQM with its interval."""
    from benchmarks import compare_versions

    found = compare_versions.compare(load(GENERALIZATION), ours, theirs, metric)
    iqm = found["ratio_iqm"]
    return found["lower"], found["higher"], iqm["value"], iqm["low"], iqm["high"]


def _versions(ours: str, theirs: str) -> tuple:
    """Test loss lower and higher, its ratio IQM and interval; training loss higher."""
    return (*_paired(ours, theirs, "test_loss"), _paired(ours, theirs, "train_loss")[1])


def _lower_higher(ours: str, theirs: str) -> tuple:
    """Training loss lower and higher, its ratio IQM and interval; test loss lower and higher."""
    return (*_paired(ours, theirs, "train_loss"), *_paired(ours, theirs, "test_loss")[:2])


def _effect(horizon: str, metric: str) -> dict:
    """The subject against its untrained initialization, paired by seed (the record's own)."""
    return load(GENERALIZATION)["meta_training_effect"][horizon][metric]


def _meta_training_effect(horizon: str, metric: str) -> tuple:
    effect = _effect(horizon, metric)
    iqm = effect["ratio_iqm"]
    counts = (effect["helps"], effect["hurts"], effect["unclear"])
    return (_subject(), *counts, iqm["value"], iqm["low"], iqm["high"])


ENGINE_SHARDED, ENGINE_ONE = "engine, chunks of 1 (2 dev)", "engine, all pairs at once (1 dev)"
ENGINE_ALL_2 = "engine, all pairs at once (2 dev)"

README_FIGURES: list[Figure] = [
    Figure(
        GENERALIZATION,
        "`python -m benchmarks.generalization --record`: {} held-out tasks",
        lambda: (_row("1x")["tasks"],),
    ),
    Figure(
        GENERALIZATION,
        "at their own horizons, {} seeds",
        lambda: (len(load(GENERALIZATION)["reports"]["suite"]["settings"]["seeds"]),),
    ),
    Figure(
        GENERALIZATION,
        "`{:s}` (the default) beats tuned AdamW's training loss on {} of {} tasks ({} ties) and\n"
        "its test loss on {}",
        lambda: (
            shipped.DEFAULT_PRETRAINED,
            _counts("train_loss", shipped.DEFAULT_PRETRAINED)[0],
            _row("1x", shipped.DEFAULT_PRETRAINED)["tasks"],
            _counts("train_loss", shipped.DEFAULT_PRETRAINED)[1],
            _counts("test_loss", shipped.DEFAULT_PRETRAINED)[0],
        ),
    ),
    Figure(
        GENERALIZATION,
        "`normalized-v6` (orthogonalized directions) wins\nthe training loss on {} and the test "
        "loss on {}",
        lambda: (_counts("train_loss", V6)[0], _counts("test_loss", V6)[0]),
    ),
    Figure(
        OPTIMIZER_STEP,
        "a CPU step costs {:.0f}x Adam's on a 1M-parameter MLP (the rule without it, "
        "`normalized-v5`: {:.1f}x)",
        lambda: (
            _step("step/default_over_adam"),
            _step("step/normalized_over_adam"),
        ),
    ),
    Figure(
        GENERALIZATION,
        "the best of any optimizer in the table: {:.2f} and {:.2f}x",
        lambda: (_best_at_1x("win_rate_train_loss"), _best_at_1x("speedup_iqm")),
    ),
]

RESULTS_FIGURES: list[Figure] = [
    Figure(
        DEFAULT_CONFIG_RUNS,
        "500 outer steps took {:.0f} s and the meta-loss went {:.2g} -> {:.2g}",
        lambda: _wall_and_tenths(_default_run("outer_valid")),
    ),
    Figure(
        DEFAULT_CONFIG_RUNS,
        "its 500 steps: {:.0f} s)",
        lambda: (_default_run("train")["outer_steps_wall_seconds"],),
    ),
    Figure(
        DEFAULT_CONFIG_RUNS,
        "was {:.2g} / {:.2g} / {:.2g} with the train-loss rule and {:.2g} / {:.2g} / {:.2g} with",
        lambda: (*_default_test_losses("train"), *_default_test_losses("outer_valid")),
    ),
    Figure(
        PRETRAINED,
        "`lopt meta-train --config pretrained`: {} outer steps, 40 antithetic pairs",
        lambda: (load(PRETRAINED)["budget"]["outer_steps"],),
    ),
    Figure(
        PRETRAINED,
        "20 steps, each problem's meta-loss relative to its initial loss; {:.1f}M inner steps",
        lambda: (load(PRETRAINED)["budget"]["inner_particle_steps"] / 1e6,),
    ),
    Figure(
        PRETRAINED,
        "loss) {:.3f} in the first tenth, {:.3f} in the last",
        _meta_loss_tenths,
    ),
    Figure(
        GENERALIZATION,
        "On the {} held-out tasks of the generalization benchmark",
        lambda: (_row("1x", V1)["tasks"],),
    ),
    Figure(
        GENERALIZATION,
        "against per-task tuned AdamW it wins {}, ties {} and loses {} in\ntraining loss, and wins "
        "only {} in test loss",
        lambda: (*_counts("train_loss", V1), _counts("test_loss", V1)[0]),
    ),
    Figure(
        GENERALIZATION,
        "It beats tuned AdamW's\ntest loss on {} of the {} tasks and its accuracy on {}, but its "
        "training loss on {}",
        lambda: (
            _counts("test_loss", V2)[0],
            _row("1x", V2)["tasks"],
            _counts("test_accuracy", V2)[0],
            _counts("train_loss", V2)[0],
        ),
    ),
    Figure(
        GENERALIZATION,
        "its test loss is\nlower on {} tasks and higher on {} (ratio IQM {:.3f}, interval {:.3f} "
        "to {:.3f}) and its training loss\nhigher on {}",
        lambda: _versions(V2, V1),
    ),
    Figure(
        GENERALIZATION,
        "v2's train-loss\nwin rate ({:.3f}) is below v1's ({:.3f})",
        lambda: (_win("1x", contender=V2), _win("1x", contender=V1)),
    ),
    Figure(
        GENERALIZATION,
        "Against tuned AdamW at 1x it wins {}, ties {} and loses {} in training loss and\n"
        "wins {}, ties {} and loses {} in test loss (training-loss win rate {:.3f})",
        lambda: (
            *_counts("train_loss", V3, "1x"),
            *_counts("test_loss", V3, "1x"),
            _win("1x", contender=V3),
        ),
    ),
    Figure(
        GENERALIZATION,
        "Against tuned AdamW at 1x: training loss {}/{}/{} (win rate {:.3f}; v1\n{:.3f}), "
        "test loss {}/{}/{} ({:.3f}; v1 {:.3f}), accuracy {}/{}/{}",
        lambda: _beside_previous(V4, V1),
    ),
    Figure(
        GENERALIZATION,
        "v4's test loss is lower on {} tasks and higher on {} (ratio IQM {:.3f},\n"
        "interval {:.3f} to {:.3f}) and its training loss higher on {}",
        lambda: _versions(V4, V1),
    ),
    Figure(
        GENERALIZATION,
        "at 2x its wins against AdamW fall to {} in training loss and\n{} in test loss "
        "(v1: {} and {})",
        lambda: (
            _counts("train_loss", V4, "2x")[0],
            _counts("test_loss", V4, "2x")[0],
            _counts("train_loss", V1, "2x")[0],
            _counts("test_loss", V1, "2x")[0],
        ),
    ),
    Figure(
        GENERALIZATION,
        "Against tuned AdamW at 1x: training\nloss {}/{}/{} (win rate {:.3f}; v4 {:.3f}), test "
        "loss {}/{}/{} ({:.3f}; v4 {:.3f}), accuracy\n{}/{}/{}",
        lambda: _beside_previous(V5, V4),
    ),
    Figure(
        GENERALIZATION,
        "v5's test loss is lower on {} tasks\nand higher on {} (ratio IQM {:.3f}, interval {:.3f} "
        "to {:.3f}) and its training loss higher on {}",
        lambda: _versions(V5, V4),
    ),
    Figure(
        GENERALIZATION,
        "Against tuned AdamW at 1x: training loss\n{}/{}/{} (win rate {:.3f}; v5 {:.3f}), test "
        "loss {}/{}/{} ({:.3f}; v5 {:.3f}), accuracy\n{}/{}/{}",
        lambda: _beside_previous(V6, V5),
    ),
    Figure(
        GENERALIZATION,
        "v6's training loss is lower on {} tasks and higher on {} (ratio IQM {:.3f},\ninterval "
        "{:.3f} to {:.3f}); its test loss lower on {} and higher on {}",
        lambda: _lower_higher(V6, V5),
    ),
    Figure(
        GENERALIZATION,
        "training loss / AdamW's IQM {:.2f}\n(v5 {:.2f}), test loss {:.2f} (v5 {:.2f}), speed-up "
        "{:.2f}x (v5 {:.2f}x)",
        lambda: (
            _row("1x", V6)["normalized_train_loss_iqm"]["value"],
            _row("1x", V5)["normalized_train_loss_iqm"]["value"],
            _row("1x", V6)["normalized_test_loss_iqm"]["value"],
            _row("1x", V5)["normalized_test_loss_iqm"]["value"],
            _row("1x", V6)["speedup_iqm"]["value"],
            _row("1x", V5)["speedup_iqm"]["value"],
        ),
    ),
    Figure(
        PRETRAINED_V7,
        "v6's theta for {} outer steps with the meta-loss turned toward held-out data",
        lambda: (load(PRETRAINED_V7)["budget"]["outer_steps"],),
    ),
    Figure(
        PRETRAINED_V7,
        "`--config pretrained_v7`; {:.0f} min). Its meta-loss\nwent {:.4f} -> {:.4f}",
        lambda: _minutes_and_tenths(PRETRAINED_V7),
    ),
    Figure(
        GENERALIZATION,
        "Against tuned AdamW at 1x, v7's training loss\n{}/{}/{} (win rate {:.3f}; v5 {:.3f}), "
        "test loss {}/{}/{} ({:.3f}; v5 {:.3f}),\naccuracy {}/{}/{}",
        lambda: _beside_previous(V7, V5),
    ),
    Figure(
        GENERALIZATION,
        "against v5, v7's test loss is lower on {} tasks and higher on {} (ratio IQM {:.3f},\n"
        "interval {:.3f} to {:.3f}) and its training loss higher on {}",
        lambda: _versions(V7, V5),
    ),
    Figure(
        GENERALIZATION,
        "from, v7's test loss is lower on {} tasks and higher on {} (ratio IQM {:.3f}, interval "
        "{:.3f} to\n{:.3f}) and its training loss higher on {}",
        lambda: _versions(V7, V6),
    ),
    Figure(
        WEIGHT_DECAY_SWEEP_V7,
        "0.3 gave v7 the lowest mean test loss, {:.3f} -> {:.3f}",
        lambda: tuple(
            load(WEIGHT_DECAY_SWEEP_V7)["results"][w]["mean_test_loss"] for w in ("0.0001", "0.3")
        ),
    ),
    Figure(
        PRETRAINED_V8,
        "v7's theta for {} outer steps with decoupled weight decay 0.3",
        lambda: (load(PRETRAINED_V8)["budget"]["outer_steps"],),
    ),
    Figure(
        PRETRAINED_V8,
        "`--config pretrained_v8`; {:.0f} min). Its meta-loss went {:.4f} -> {:.4f}",
        lambda: _minutes_and_tenths(PRETRAINED_V8),
    ),
    Figure(
        GENERALIZATION,
        "Against tuned AdamW at 1x, v8's training loss\n{}/{}/{} (win rate {:.3f}; v7 {:.3f}), "
        "test loss {}/{}/{} ({:.3f}; v7 {:.3f}),\naccuracy {}/{}/{}",
        lambda: _beside_previous(V8, V7),
    ),
    Figure(
        GENERALIZATION,
        "against v7, v8's test loss is lower on {} tasks and higher on {} (ratio IQM {:.3f},\n"
        "interval {:.3f} to {:.3f}) and its training loss higher on {}",
        lambda: _versions(V8, V7),
    ),
    Figure(
        OPTIMIZER_STEP,
        "a train step with\northogonalized directions costs {:.0f}x Adam's",
        lambda: (_step("step/normalized_orthogonal_over_adam"),),
    ),
    Figure(
        GENERALIZATION,
        "`python -m benchmarks.generalization --record` ({:.0f} min wall",
        lambda: (load(GENERALIZATION)["seconds"] / 60,),
    ),
    Figure(
        GENERALIZATION,
        "{:.0f} CPU-min; the goal is 15 min",
        lambda: (load(GENERALIZATION)["cpu_seconds"] / 60,),
    ),
    Figure(
        GENERALIZATION,
        "Suite `generalization` (`lopt tasks list` shows it): {} held-out tasks",
        lambda: (_row("1x")["tasks"],),
    ),
    Figure(
        GENERALIZATION,
        "no tuning-free optimizer beats AdamW's training loss on more than {} (Muon, at its\n"
        "reference rate, on {})",
        _tuning_free_train_wins,
    ),
    Figure(
        GENERALIZATION,
        "`normalized-v2` wins test loss on {} and accuracy on {}, and beats the\nbest tuning-free "
        "optimizer of each task in test loss on {} of {}",
        lambda: (
            _counts("test_loss", V2)[0],
            _counts("test_accuracy", V2)[0],
            _row("1x", V2)["vs_best_tuning_free"]["test_loss"]["wins"],
            _row("1x", V2)["tasks"],
        ),
    ),
    Figure(
        GENERALIZATION,
        "`{:s}` against its own untrained initialization, paired by seed:\ntest loss lower on {} "
        "tasks, higher on {}, unclear on {} (ratio IQM {:.2f}, interval {:.2f} to {:.2f})",
        lambda: _meta_training_effect("1x", "test_loss"),
    ),
    Figure(
        GENERALIZATION,
        "its training loss lower on {} and higher on {} (ratio IQM {:.2f})",
        lambda: (
            _effect("1x", "train_loss")["helps"],
            _effect("1x", "train_loss")["hurts"],
            _effect("1x", "train_loss")["ratio_iqm"]["value"],
        ),
    ),
    Figure(
        ABLATIONS,
        "The per-parameter MLP rule with a learned\nstep ends {:.1f}x above tuned Adam's "
        "training loss",
        lambda: (_ablation("mlp")["normalized_train_loss_iqm"]["value"],),
    ),
    Figure(
        ABLATIONS,
        "training loss at {:.2f} of tuned Adam's (IQM; the reference {:.2f})\nand a training-loss "
        "win rate of {:.1f} ({:.1f}), with no better test loss ({:.2f} of Adam's; the\nreference "
        "{:.2f}). Adam's direction for vectors (`adam_vectors`) has the best test loss ({:.2f})\n"
        "and the worst training loss ({:.2f})",
        lambda: (
            _ablation("orthogonalize")["normalized_train_loss_iqm"]["value"],
            _ablation("reference")["normalized_train_loss_iqm"]["value"],
            _ablation("orthogonalize")["win_rate_train_loss"]["value"],
            _ablation("reference")["win_rate_train_loss"]["value"],
            _ablation("orthogonalize")["normalized_test_loss_iqm"]["value"],
            _ablation("reference")["normalized_test_loss_iqm"]["value"],
            _ablation("adam_vectors")["normalized_test_loss_iqm"]["value"],
            _ablation("adam_vectors")["normalized_train_loss_iqm"]["value"],
        ),
    ),
    Figure(
        OPTIMIZER_STEP,
        "({:.2f}M-parameter MLP, batch {},",
        lambda: (
            load(OPTIMIZER_STEP)["model"]["num_params"] / 1e6,
            load(OPTIMIZER_STEP)["batch_size"],
        ),
    ),
    Figure(
        OPTIMIZER_STEP,
        "1-minute load {:.1f} at the start, {:.1f} at the end",
        lambda: (
            load(OPTIMIZER_STEP)["provenance"]["load_average"][0],
            load(OPTIMIZER_STEP)["load_average_after"][0],
        ),
    ),
    Figure(
        OPTIMIZER_STEP,
        "a train step with the normalized rule is {:.1f}x Adam's\n(goal <= 2x: missed by wall "
        "clock; by CPU time {:.2f}x)",
        lambda: (
            _step("step/normalized_over_adam"),
            load(OPTIMIZER_STEP)["cpu_ratios"]["step/normalized_over_adam"],
        ),
    ),
    Figure(
        OPTIMIZER_STEP,
        "directions, step gain) costs {:.0f}x Adam's step",
        lambda: (_step("step/default_over_adam"),),
    ),
    Figure(
        OPTIMIZER_STEP,
        "its update is {:.1f}x the bare pass of its network",
        lambda: (_step("update/normalized_over_bare"),),
    ),
    Figure(
        OPTIMIZER_STEP,
        "that bare pass alone ({:.0f} ms) is {:.2f}x Adam's whole step",
        lambda: (
            1e3 * load(OPTIMIZER_STEP)["seconds"]["bare/normalized"],
            load(OPTIMIZER_STEP)["seconds"]["bare/normalized"]
            / load(OPTIMIZER_STEP)["seconds"]["step/adam"],
        ),
    ),
    Figure(
        OPTIMIZER_STEP,
        "The MLP rule's step is {:.0f}x, the LSTM's {:.0f}x",
        lambda: (_step("step/mlp_over_adam"), _step("step/lstm_over_adam")),
    ),
    Figure(
        OPTIMIZER_STEP,
        "the (8, 8)\nMLP fused into one loop per tensor is {:.1f}x",
        lambda: (_step("step/mlp_small_over_adam"),),
    ),
    Figure(
        THROUGHPUT_PRETRAINED,
        "medians over {} rounds of {} outer steps, load {:.1f})",
        lambda: (
            load(THROUGHPUT_PRETRAINED)["setting"]["rounds"],
            load(THROUGHPUT_PRETRAINED)["setting"]["steps_per_round"],
            float(np.median(load(THROUGHPUT_PRETRAINED)["load_average_per_round"])),
        ),
    ),
    Figure(
        THROUGHPUT_PRETRAINED,
        "2 CPU devices) {:.0f} inner\nparticle-steps/s = **{:.2f}x** plain AdamW on the same "
        "trainings ({:.0f}, the ceiling",
        lambda: (
            _throughput(ENGINE_SHARDED, THROUGHPUT_PRETRAINED),
            _throughput(ENGINE_SHARDED, THROUGHPUT_PRETRAINED)
            / _throughput("unroll: adamw", THROUGHPUT_PRETRAINED),
            _throughput("unroll: adamw", THROUGHPUT_PRETRAINED),
        ),
    ),
    Figure(
        THROUGHPUT_PRETRAINED,
        "all pairs vectorised {:.0f} ({:.2f}x)",
        lambda: (
            _throughput(ENGINE_ALL_2, THROUGHPUT_PRETRAINED),
            _throughput(ENGINE_ALL_2, THROUGHPUT_PRETRAINED)
            / _throughput("unroll: adamw", THROUGHPUT_PRETRAINED),
        ),
    ),
    Figure(
        THROUGHPUT_PRETRAINED,
        "forward/backward {:.0f} us (data sampling {:.0f}, augmentation {:.0f}), the rule's update "
        "{:.0f},\nof which orthogonalization {:.0f}, AdamW's\n{:.1f}",
        lambda: (
            _breakdown("forward_backward_and_data"),
            _breakdown("of_which_data_sampling"),
            round(_breakdown("of_which_augmentation")) + 0,  # no "-0" for a noisy 0
            _breakdown("rule_update_vectorised"),
            _breakdown("of_which_orthogonalization"),
            _breakdown("adamw_update"),
        ),
    ),
    Figure(
        THROUGHPUT_PRETRAINED,
        "without orthogonalization its unroll runs at {:.2f}x AdamW's",
        lambda: (
            _throughput("unroll: rule, no orthogonalization", THROUGHPUT_PRETRAINED)
            / _throughput("unroll: adamw", THROUGHPUT_PRETRAINED),
        ),
    ),
    Figure(
        THROUGHPUT_PRETRAINED,
        "the held-out meta-loss's forward pass is {:.0f} us",
        lambda: (_breakdown("of_which_held_out_meta_loss"),),
    ),
    Figure(
        THROUGHPUT_PRETRAINED,
        "spends {:.0f} us more than the rule's own unroll",
        lambda: (_breakdown("es_overhead_vectorised"),),
    ),
    Figure(
        THROUGHPUT_PRETRAINED,
        "one pair per chunk ({:.1f} us) against the rule's own unroll's {:.1f} us",
        lambda: (
            _breakdown("engine_as_meta_train_runs_it"),
            1e6 / _throughput("unroll: rule (", THROUGHPUT_PRETRAINED),
        ),
    ),
    Figure(
        THROUGHPUT,
        "median of {} rounds of\n{} outer steps",
        lambda: (
            load(THROUGHPUT)["setting"]["rounds"],
            load(THROUGHPUT)["setting"]["steps_per_round"],
        ),
    ),
    Figure(
        THROUGHPUT,
        "1-minute load average {:.1f} to {:.1f} over the rounds",
        lambda: (
            min(load(THROUGHPUT)["load_average_per_round"]),
            max(load(THROUGHPUT)["load_average_per_round"]),
        ),
    ),
    Figure(
        THROUGHPUT,
        "(what `lopt meta-train` runs here) {:.0f} = **{:.2f}x** a hand-written evosax\n"
        "{} NoiseReuseES (vmapped, scanned, 1 device: {:.0f})",
        lambda: (
            _throughput(ENGINE_SHARDED),
            _throughput(ENGINE_SHARDED) / _throughput("evosax"),
            load(THROUGHPUT)["provenance"]["evosax_version"],
            _throughput("evosax"),
        ),
    ),
    Figure(
        THROUGHPUT,
        "engine on 1 device {:.0f} (all pairs vectorised) = {:.2f}x",
        lambda: (_throughput(ENGINE_ONE), _throughput(ENGINE_ONE) / _throughput("evosax")),
    ),
    Figure(
        THROUGHPUT,
        "the same 64 trainings with Adam run {:.1f}x faster",
        lambda: (_throughput("adam, no ES (1 dev)") / _throughput(ENGINE_ONE),),
    ),
    Figure(
        THROUGHPUT,
        "(one device, one pair per chunk:\n{:.2f}x evosax)",
        lambda: (_throughput("engine, chunks of 1 (1 dev)") / _throughput("evosax"),),
    ),
    Figure(
        THROUGHPUT,
        "plain Adam with no estimator {:.0f} (1 device) / {:.0f} (2 devices)",
        lambda: (_throughput("adam, no ES (1 dev)"), _throughput("adam, no ES (2 dev)")),
    ),
    Figure(
        DEFAULT_ARCHITECTURE,
        "The normalized rule (500 outer steps in {:.0f} s): meta-loss"
        " {:.2g} (first tenth) -> {:.2g}",
        lambda: _wall_and_tenths(_architecture_run("normalized")),
    ),
    Figure(
        DEFAULT_ARCHITECTURE,
        "mlp_digits_wide {:s} vs {:s}, mlp_digits_tanh {:s} vs {:s}, mlp_mnist1d {:s}\nvs {:s} "
        "(better on {}/{}; the untrained rule: {:s}, {:s}, {:s})",
        lambda: (
            *(
                value
                for pair in zip(
                    _held_out_train_losses("normalized", "meta-trained"),
                    _held_out_train_losses("normalized", "adam"),
                    strict=True,
                )
                for value in pair
            ),
            *_better_than_adam("normalized"),
            *_held_out_train_losses("normalized", "untrained"),
        ),
    ),
    Figure(
        DEFAULT_ARCHITECTURE,
        "500 outer steps in {:.0f} s, on\nthe same machine just before): meta-loss"
        " {:.2g} -> {:.2g}",
        lambda: _wall_and_tenths(_architecture_run("mlp")),
    ),
    Figure(
        DEFAULT_ARCHITECTURE,
        "mlp_digits_tanh {:s} vs {:s} (better), mlp_mnist1d {:s} vs {:s} and\nmlp_digits_wide {:s} "
        "vs {:s} (worse)",
        lambda: tuple(
            value
            for index in (1, 2, 0)
            for value in (
                _held_out_train_losses("mlp", "meta-trained")[index],
                _held_out_train_losses("mlp", "adam")[index],
            )
        ),
    ),
    Figure(
        SIGNAL_TO_NOISE,
        "{} replicates of {} pairs per group at\nthe theta of `{:s}`",
        lambda: (
            load(SIGNAL_TO_NOISE)["settings"]["replicates"],
            load(SIGNAL_TO_NOISE)["settings"]["pairs_per_replicate"],
            "normalized-" + load(SIGNAL_TO_NOISE)["settings"]["rule"],
        ),
    ),
    Figure(
        SIGNAL_TO_NOISE,
        "Isotropic ES needs at least {} pairs for a cosine of 0.5 (theta has {}\nentries)",
        lambda: (
            load(SIGNAL_TO_NOISE)["settings"]["es_floor_pairs"],
            load(SIGNAL_TO_NOISE)["settings"]["theta_entries"],
        ),
    ),
    Figure(
        SIGNAL_TO_NOISE,
        "the independent-gradient control needs {:.0f} pairs [{:.0f}, {:.0f}]",
        lambda: (
            load(SIGNAL_TO_NOISE)["control"]["independent"]["pairs_for_cosine_half"],
            *load(SIGNAL_TO_NOISE)["control"]["independent"]["pairs_for_cosine_half_interval"],
        ),
    ),
    Figure(
        SIGNAL_TO_NOISE,
        "{} of the table's {} SNRs are more than 2 SE above zero",
        lambda: (
            sum(
                entry["snr_per_pair"] > 2 * entry["snr_per_pair_se"]
                for groups in load(SIGNAL_TO_NOISE)["results"].values()
                for entry in groups.values()
            ),
            sum(len(groups) for groups in load(SIGNAL_TO_NOISE)["results"].values()),
        ),
    ),
    Figure(
        VARIANCE,
        "Var/||g||^2 of a window's ES-Single estimate is {:.2f} +- {:.2f} at every T/K",
        lambda: (
            _variance("independent", "es_single")[0],
            _variance("independent", "es_single", "variance_ratio_se")[0],
        ),
    ),
    Figure(
        VARIANCE,
        "PES is {:.1f}, {:.1f} +- {:.1f}, {:.0f} +- {:.0f}, {:.0f} +- {:.0f}\n"
        "against theory {:.0f}, {:.0f}, {:.0f}, {:.0f}",
        lambda: _pes_independent(),
    ),
    Figure(
        VARIANCE_SEED,
        "seeds 1 and 2 give {:.1f} and {:.1f} at T/K = 10",
        lambda: (_seed_variance(1), _seed_variance(2)),
    ),
    Figure(
        VARIANCE,
        "ES-Single's per-window variance grows with T/K ({:.1f}, {:.1f}, {:.1f}, {:.1f})\n"
        "while its whole-problem average stays at {:.1f}",
        lambda: (
            *_variance("mlp_digits", "es_single"),
            _variance("mlp_digits", "es_single", "problem_variance_ratio")[0],
        ),
    ),
    Figure(
        VARIANCE,
        "TES's per-window variance is {:.1f}, {:.2f}, {:.0f} at T/K = 10, 100,\n"
        "1000, with bias {:.0%}, {:.0%}, {:.0%}",
        lambda: (*_variance("mlp_digits", "tes")[1:], *_variance("mlp_digits", "tes", "bias")[1:]),
    ),
]


class Document(NamedTuple):
    """A markdown file, the tables generated whole in it and the figures quoted in its prose."""

    path: str
    tables: dict[str, Callable[[], str]]
    figures: list[Figure]

    @property
    def name(self) -> str:
        return os.path.relpath(self.path, ROOT)


DOCUMENTS: tuple[Document, ...] = (
    Document(README, {"generalization": headline_table}, README_FIGURES),
    Document(
        RESULTS_MD,
        {
            "generalization_horizons": horizons_table,
            "ablations": ablations_table,
            "signal_to_noise": signal_to_noise_table,
        },
        RESULTS_FIGURES,
    ),
)


def _block(name: str) -> re.Pattern:
    """The block ``name`` (a table, or nothing yet) with its opening and closing lines."""
    return re.compile(
        rf"(?P<open><!-- generated: (?P<name>{name}) -->\n)(?P<table>.*?)\n?"
        r"(?P<close><!-- /generated -->)",
        re.S,
    )


def table_blocks(text: str) -> dict[str, str]:
    """``name -> table`` for every ``<!-- generated: NAME -->`` block of ``text``."""
    return {match["name"]: match["table"] for match in _block(r"\w+").finditer(text)}


def check_figure(figure: Figure, text: str, document: str = "the text") -> str | None:
    """What is wrong with ``figure`` in ``text``, or ``None``."""
    matches = list(figure.pattern().finditer(text))
    if len(matches) != 1:
        return f"{len(matches)} places in {document} (want 1) match the phrase {figure.phrase!r}"
    quoted, rendered = list(matches[0].groups()), figure.rendered()
    if quoted != rendered:
        source = os.path.relpath(figure.source, ROOT)
        return f"{document} has {quoted} where {source} gives {rendered}"
    return None


def problems(document: Document, text: str) -> list[str]:
    """Every table or figure of ``document`` that ``text`` does not quote as its JSON gives."""
    found = []
    blocks = table_blocks(text)
    for name, render in document.tables.items():
        if name not in blocks:
            found.append(f"{document.name} has no <!-- generated: {name} --> block")
        elif blocks[name] != render():
            found.append(f"the {name} table of {document.name} is not the one its JSON gives")
    for figure in document.figures:
        problem = check_figure(figure, text, document.name)
        if problem:
            found.append(problem)
    return found


def write(document: Document, text: str) -> str:
    """``text`` with every table and every figure's fields replaced by the JSONs'."""
    for name, render in document.tables.items():
        table = render()
        text = _block(name).sub(lambda m, t=table: f"{m['open']}{t}\n{m['close']}", text)
    for figure in document.figures:
        match = figure.pattern().search(text)
        if match is None:
            continue
        for index in reversed(range(len(match.groups()))):
            start, end = match.span(index + 1)
            text = text[:start] + figure.rendered()[index] + text[end:]
    return text


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--write", action="store_true", help="refresh README.md and docs/results.md in place"
    )
    args = parser.parse_args(argv)
    found = []
    for document in DOCUMENTS:
        with open(document.path) as file:
            text = file.read()
        if args.write:
            text = write(document, text)  # before opening for writing: a failure keeps the file
            with open(document.path, "w") as file:
                file.write(text)
        found += problems(document, text)
    for problem in found:
        print(problem, file=sys.stderr)
    if found:
        print(
            "fix: python -m benchmarks.readme_results --write (or fix the phrase)", file=sys.stderr
        )
    else:
        print(f"{', '.join(d.name for d in DOCUMENTS)}: every table and figure is its JSON's")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
