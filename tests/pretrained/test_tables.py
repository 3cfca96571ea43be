"""The results tables of README.md and docs/ are what covidedge.pretrained.tables renders from
models.json (and benchmarks/results/), never pasted by hand."""

from __future__ import annotations

import json

import pytest

from covidedge.pretrained import PACKAGE_DIR
from covidedge.pretrained import tables
from tests.conftest import REPO_ROOT

PAGES = [REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").glob("*.md"))]


def test_readme_and_docs_tables_are_what_models_json_gives(monkeypatch):
    monkeypatch.delenv("COVIDEDGE_MODELS_DIR", raising=False)
    stale = tables.stale(PAGES)
    assert not stale, (f"{', '.join(stale)}: the tables differ from covidedge/pretrained/models.json; "
                       "run: python -m covidedge.pretrained.tables")


def test_the_readme_has_the_accuracy_and_latency_tables():
    text = (REPO_ROOT / "README.md").read_text()
    for block in ("accuracy", "latency"):
        assert f"<!-- tables:{block} -->" in text and f"<!-- /tables:{block} -->" in text


@pytest.fixture()
def released(tmp_path, monkeypatch):
    """A models folder whose classifier row has what a release with temperature writes."""
    doc = json.loads((PACKAGE_DIR / "models.json").read_text())
    cls = next(m for m in doc["models"] if m["task"] == "classifier")
    s = cls["summary"]
    s["temperature"] = 1.7321
    for i, r in enumerate(s["val"]):
        r["ece"] = 0.0123 + i / 1000
    s["robustness"] = {"split": "Val", "images": 932, "worst_delta_points": -7.5,
                       "rows": [{"shift": "none (clean)", "accuracy": 0.84, "delta_points": 0.0, "agreement": 1.0},
                                {"shift": "gamma 0.6", "accuracy": 0.765, "delta_points": -7.5, "agreement": 0.81}],
                       "batchnorm_check": {"images": 500, "seed": 0, "accuracy": 0.84,
                                           "accuracy_reestimated": 0.83, "delta_points": -1.0}}
    (tmp_path / "models.json").write_text(json.dumps(doc))
    monkeypatch.setenv("COVIDEDGE_MODELS_DIR", str(tmp_path))
    return s


def test_rows_temperature_and_robustness_come_from_the_index(released):
    acc = tables.accuracy_table()
    assert "| checkpoint (torch) | " in acc and "0.0123" in acc and "0.0163" in acc  # ECE per row
    assert f"{released['val'][4]['accuracy']:.4f}" in acc
    assert "temperature 1.7321" in tables.temperature_line()
    rob = tables.robustness_table()
    assert "| gamma 0.6 | 0.7650 | -7.50 | 0.8100 |" in rob and "0.8400 -> 0.8300" in rob
    full = tables.classifier_table()
    assert full.count("\n") == 1 + len(released["val"])


def test_a_changed_index_makes_the_pages_stale_and_a_run_renders_them(released, tmp_path):
    page = tmp_path / "page.md"
    page.write_text("text\n<!-- tables:accuracy -->\nold rows\n<!-- /tables:accuracy -->\nmore\n")
    assert tables.stale([page]) == [str(page)]
    assert tables.main([str(page)]) == 0
    text = page.read_text()
    assert "old rows" not in text and "0.0123" in text and text.endswith("<!-- /tables:accuracy -->\nmore\n")
    assert tables.main(["--check", str(page)]) == 0


def test_an_unknown_block_is_an_error(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("<!-- tables:nonsense -->\n<!-- /tables:nonsense -->\n")
    with pytest.raises(ValueError, match="nonsense"):
        tables.render_text(page.read_text())
