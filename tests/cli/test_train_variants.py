"""``covidedge train --variant``: a named size from the registry, explicit options win over it,
and the name is recorded in the checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

torch = pytest.importorskip("torch")

from covidedge.cli.main import cli, main  # noqa: E402
from covidedge.data.synth import make_synthetic_dataset  # noqa: E402
from covidedge.formats.checkpoint import read_checkpoint  # noqa: E402
from covidedge.models.registry import list_variants  # noqa: E402

QUICK = ["--epochs", "1", "--batch-size", "4", "--image-size", "32", "--json"]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    return make_synthetic_dataset(tmp_path_factory.mktemp("vardata"), per_class=2, size=32,
                                  splits=("Train", "Val"))


def _train(args):
    result = CliRunner().invoke(cli, ["train", *args])
    assert result.exit_code == 0, result.output + str(result.exception)
    return json.loads(result.stdout)


def test_help_lists_every_variant_of_the_task():
    for task in ("classifier", "segmenter"):
        text = CliRunner().invoke(cli, ["train", task, "--help"], terminal_width=400).output
        assert "--variant NAME" in text
        for name in list_variants(task):
            assert name in text, (task, name)
        other = "segmenter" if task == "classifier" else "classifier"
        assert not any(f"{n} (" in text for n in list_variants(other))


def test_classifier_variant_with_an_explicit_image_size(data_root, tmp_path):
    out = tmp_path / "cls"
    payload = _train(["classifier", "--data", str(data_root), "--out", str(out),
                      "--variant", "xception64-small", *QUICK])
    ckpt = read_checkpoint(payload["best_checkpoint"])
    assert list(ckpt["spec"]["input_size"]) == [32, 32]  # --image-size wins over the variant's 64 px
    assert ckpt["spec"]["model_kwargs"]["width_mult"] == 0.25  # the variant's width
    options = ckpt["extra"]["train_options"]
    assert options["variant"] == "xception64-small" and options["image_size"] == 32
    assert json.loads((out / "history.json").read_text())["options"]["variant"] == "xception64-small"


def test_segmenter_variant_with_an_explicit_width(data_root, tmp_path):
    payload = _train(["segmenter", "--data", str(data_root), "--out", str(tmp_path / "seg"),
                      "--variant", "resunet64-small", "--base-width", "4", *QUICK])
    ckpt = read_checkpoint(payload["best_checkpoint"])
    assert ckpt["spec"]["model_kwargs"] == {"base_width": 4, "depth": 3}  # depth from the variant
    assert ckpt["extra"]["train_options"]["variant"] == "resunet64-small"


@pytest.mark.parametrize("task,name,said", [
    ("classifier", "xception-huge", "unknown classifier variant 'xception-huge'; known: xception256"),
    ("segmenter", "xception256", "'xception256' is a classifier variant"),
])
def test_unknown_variant_is_a_one_line_bad_input(data_root, tmp_path, capsys, task, name, said):
    with pytest.raises(SystemExit) as e:
        main(["train", task, "--data", str(data_root), "--out", str(tmp_path / "x"), "--variant", name])
    err = capsys.readouterr().err
    assert e.value.code == 3 and err.startswith("error: ") and err.count("\n") == 1
    assert said in err and not (tmp_path / "x").exists()
