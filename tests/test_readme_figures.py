"""README.md and docs/results.md quote the result JSONs: every table is the one
``benchmarks.readme_results`` renders from them, every figure in their prose is the value its JSON
gives, and every JSON they quote says what produced it (provenance)."""

from __future__ import annotations

import copy
import json
import pathlib

import pytest

import lopt
from benchmarks import readme_results

FIX = "run `python -m benchmarks.readme_results --write` (or fix the phrase)"
DOCUMENTS = {document.name: document for document in readme_results.DOCUMENTS}
TEXTS = {name: pathlib.Path(document.path).read_text() for name, document in DOCUMENTS.items()}


def test_both_documents_are_generated():
    assert set(DOCUMENTS) == {"README.md", "docs/results.md"}
    assert "docs/results.md" in TEXTS["README.md"], "the README links to the rest of the results"


@pytest.mark.parametrize(
    "document, name",
    [(d.name, name) for d in readme_results.DOCUMENTS for name in d.tables],
)
def test_table_is_the_jsons(document, name):
    blocks = readme_results.table_blocks(TEXTS[document])
    assert name in blocks, f"{document} has no <!-- generated: {name} --> block"
    rendered = DOCUMENTS[document].tables[name]()
    assert blocks[name] == rendered, f"the {name} table of {document} is stale: {FIX}"


@pytest.mark.parametrize(
    "document, figure",
    [(d.name, figure) for d in readme_results.DOCUMENTS for figure in d.figures],
    ids=[f"{d.name}:{f.phrase[:40]}" for d in readme_results.DOCUMENTS for f in d.figures],
)
def test_figure_is_the_jsons(document, figure):
    problem = readme_results.check_figure(figure, TEXTS[document], document)
    assert problem is None, f"{problem}; {FIX}"


@pytest.mark.parametrize("document", list(DOCUMENTS))
def test_write_is_idempotent_and_keeps_the_prose(document):
    assert readme_results.write(DOCUMENTS[document], TEXTS[document]) == TEXTS[document]


def test_a_changed_number_is_caught():
    results = DOCUMENTS["docs/results.md"]
    text = TEXTS["docs/results.md"]
    figure = next(f for f in results.figures if "bare pass alone" in f.phrase)
    quoted = figure.pattern().search(text).group(1)
    altered = text.replace(f"bare pass alone ({quoted} ms)", f"bare pass alone ({quoted}1 ms)")
    assert readme_results.check_figure(figure, altered) is not None
    assert readme_results.check_figure(figure, readme_results.write(results, altered)) is None


def test_a_changed_name_is_caught():
    """A word field (the default version's name) is checked like a number."""
    readme = DOCUMENTS["README.md"]
    figure = next(f for f in readme.figures if "{:s}" in f.phrase)
    default = lopt.shipped.DEFAULT_PRETRAINED
    altered = TEXTS["README.md"].replace(
        f"`{default}` (the default)", "`normalized-v9` (the default)"
    )
    assert altered != TEXTS["README.md"]
    assert "normalized-v9" in readme_results.check_figure(figure, altered)
    assert readme_results.write(readme, altered) == TEXTS["README.md"]


def test_a_stale_or_missing_table_is_caught():
    readme = DOCUMENTS["README.md"]
    table = readme_results.table_blocks(TEXTS["README.md"])["generalization"]
    stale = TEXTS["README.md"].replace(table, table.replace("0/36", "1/36", 1))
    assert any("not the one its JSON gives" in p for p in readme_results.problems(readme, stale))
    assert readme_results.write(readme, stale) == TEXTS["README.md"]
    empty = TEXTS["README.md"].replace(table + "\n", "")
    assert readme_results.table_blocks(empty)["generalization"] == ""
    assert readme_results.write(readme, empty) == TEXTS["README.md"]
    missing = empty.replace("<!-- generated: generalization -->\n<!-- /generated -->", "")
    assert any("no <!-- generated" in p for p in readme_results.problems(readme, missing))


def test_the_headline_table_renders_every_contender_of_the_record(monkeypatch):
    """A contender the record gains (a new shipped version) appears without editing the code."""
    record = copy.deepcopy(readme_results.load(readme_results.GENERALIZATION))
    rows = [row for row in record["headline"] if row["horizon"] == "1x"]
    added = copy.deepcopy(rows[0]) | {"contender": "normalized-v9"}
    record["headline"].append(added)
    real = readme_results.load
    monkeypatch.setattr(
        readme_results,
        "load",
        lambda path: record if path == readme_results.GENERALIZATION else real(path),
    )
    table = readme_results.headline_table().splitlines()
    names = [line.split(" | ")[0].removeprefix("| ") for line in table[2:]]
    assert names == [row["contender"] for row in rows] + ["normalized-v9"]


def _provenances(path: str) -> list[dict]:
    payload = json.loads(pathlib.Path(path).read_text())
    if "results" in payload and "provenance" not in payload:  # ablations: one per result
        return [entry["provenance"] for entry in payload["results"].values()]
    if "commit" in payload:  # lopt/weights/<name>/training.json
        return [{"commit": payload["commit"], "jax_version": payload["jax_version"]}]
    return [payload["provenance"]]


@pytest.mark.parametrize(
    "path",
    sorted(
        {figure.source for d in readme_results.DOCUMENTS for figure in d.figures}
        | {readme_results.GENERALIZATION, readme_results.ABLATIONS}
    ),
    ids=lambda path: pathlib.Path(path).name,
)
def test_every_quoted_json_has_provenance(path):
    paths = [path.format(seed) for seed in (1, 2)] if "{}" in path else [path]
    for file in paths:
        for provenance in _provenances(file):
            assert provenance.get("commit") and provenance.get("jax_version"), file


def test_throughput_json_says_how_it_was_measured():
    payload = json.loads(pathlib.Path(readme_results.THROUGHPUT).read_text())
    provenance = payload["provenance"]
    wanted = {"commit", "lopt_version", "jax_version", "argv", "date", "platform", "load_average"}
    assert wanted <= set(provenance)
    assert provenance["evosax_version"], "the evosax ratio needs the evosax row"
    assert len(payload["load_average_per_round"]) == payload["setting"]["rounds"]
