"""COVID-QU-Ex folders: every accepted root, mask availability, errors, the real data, the CLI."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from covidedge.cli.data import command as data_command
from covidedge.data.covidqu import (CLASSES, INFECTION_SUBSET, LUNG_SUBSET, CovidQuDataset, Sample,
                                    resolve_root)
from covidedge.errors import DatasetError

TINY = np.zeros((4, 4), dtype=np.uint8)


def make_layout(split_root: Path, counts=None, masks=("lung masks", "infection masks"),
                names=None) -> Path:
    """Write ``split_root/<split>/<class>/{images, masks...}/`` with tiny PNGs; returns split_root."""
    counts = counts or {"Train": 3, "Val": 2}
    for split, n in counts.items():
        for label in CLASSES:
            for folder in ("images", *masks):
                d = split_root / split / label / folder
                d.mkdir(parents=True, exist_ok=True)
                for i in (names or range(1, n + 1)):
                    Image.fromarray(TINY).save(d / f"{label.lower()}_{i}.png")
    return split_root


@pytest.fixture
def infection_root(tmp_path) -> Path:
    return make_layout(tmp_path / "dl" / INFECTION_SUBSET)


# ---------------------------------------------------------------------------------------------
# Accepted roots
# ---------------------------------------------------------------------------------------------
def test_split_folder_itself_subset_folder_and_parent(infection_root):
    for root in (infection_root, infection_root.parent):
        ds = CovidQuDataset(root)
        assert ds.root == infection_root
        assert ds.subset == INFECTION_SUBSET
        assert ds.splits == ("Train", "Val")
        assert ds.counts() == {"Train": {c: 3 for c in CLASSES}, "Val": {c: 2 for c in CLASSES}}


def test_unnamed_folder_holding_the_splits(tmp_path):
    root = make_layout(tmp_path / "my-copy")
    ds = CovidQuDataset(root)
    assert ds.root == root and ds.subset is None
    assert len(ds.samples("Train")) == 9


def test_kaggle_double_nesting(tmp_path):
    outer = tmp_path / "archive" / INFECTION_SUBSET
    inner = make_layout(outer / INFECTION_SUBSET)
    for root in (outer, outer.parent):
        ds = CovidQuDataset(root)
        assert ds.root == inner and ds.subset == INFECTION_SUBSET


def test_lung_segmentation_data_has_no_infection_masks(tmp_path):
    lung = make_layout(tmp_path / LUNG_SUBSET / LUNG_SUBSET, masks=("lung masks",))
    ds = CovidQuDataset(tmp_path / LUNG_SUBSET)
    assert ds.root == lung and ds.subset == LUNG_SUBSET
    s = ds.samples("Train")[0]
    assert s.lung_mask is not None and s.lung_mask.is_file()
    assert s.infection_mask is None
    summary = ds.summary()
    assert summary["splits"]["Train"]["lung_masks"] == 9
    assert summary["splits"]["Train"]["infection_masks"] == 0


def test_both_subsets_prefer_infection_and_subset_chooses(tmp_path):
    inf = make_layout(tmp_path / INFECTION_SUBSET)
    lung = make_layout(tmp_path / LUNG_SUBSET / LUNG_SUBSET, counts={"Train": 5}, masks=("lung masks",))
    assert CovidQuDataset(tmp_path).root == inf
    assert CovidQuDataset(tmp_path, subset="infection").root == inf
    chosen = CovidQuDataset(tmp_path, subset="lung")
    assert chosen.root == lung and chosen.counts() == {"Train": {c: 5 for c in CLASSES}}
    with pytest.raises(DatasetError, match="unknown subset 'bones'"):
        CovidQuDataset(tmp_path, subset="bones")


def test_subset_that_contradicts_the_folder(tmp_path):
    lung = make_layout(tmp_path / LUNG_SUBSET, masks=("lung masks",))
    with pytest.raises(DatasetError) as info:
        CovidQuDataset(lung, subset="infection")
    assert LUNG_SUBSET in str(info.value) and INFECTION_SUBSET in str(info.value)
    with pytest.raises(DatasetError, match="has no 'Infection Segmentation Data' subset"):
        CovidQuDataset(tmp_path, subset="infection")


# ---------------------------------------------------------------------------------------------
# Samples
# ---------------------------------------------------------------------------------------------
def test_samples_are_complete_sorted_and_deterministic(infection_root):
    make_layout(infection_root, counts={"Train": 0}, names=[10, 2, 1])  # adds 1, 2, 10 to Train
    ds = CovidQuDataset(infection_root)
    samples = ds.samples("Train")
    assert [s.label for s in samples][:4] == ["COVID-19"] * 4
    covid = [s.name for s in samples if s.label == "COVID-19"]
    assert covid == ["covid-19_1", "covid-19_2", "covid-19_3", "covid-19_10"]  # natural order
    assert samples == CovidQuDataset(infection_root).samples("Train")
    s = samples[0]
    assert isinstance(s, Sample) and s.split == "Train" and s.label_index == 0
    assert s.image.parent.name == "images"
    assert s.lung_mask == s.image.parent.parent / "lung masks" / s.image.name
    assert s.infection_mask == s.image.parent.parent / "infection masks" / s.image.name
    assert {x.label_index for x in samples if x.label == "Normal"} == {2}
    # the returned list is a copy: callers may shuffle it
    samples.reverse()
    assert ds.samples("Train")[0].name == "covid-19_1"


def test_split_names_are_case_insensitive_and_unknown_split_lists_present(infection_root):
    ds = CovidQuDataset(infection_root)
    assert ds.samples("val") == ds.samples("Val")
    with pytest.raises(DatasetError) as info:
        ds.samples("Test")
    text = str(info.value)
    assert "no split 'Test'" in text and "present: Train, Val" in text and str(infection_root) in text


def test_test_split_without_masks(tmp_path):
    root = make_layout(tmp_path / INFECTION_SUBSET)
    make_layout(root, counts={"Test": 2}, masks=())
    ds = CovidQuDataset(root)
    assert ds.splits == ("Train", "Val", "Test")
    test = ds.samples("Test")
    assert len(test) == 6 and all(s.lung_mask is None and s.infection_mask is None for s in test)
    info = ds.summary()["splits"]["Test"]
    assert info["images"] == 6 and info["lung_masks"] == 0 and info["infection_masks"] == 0
    assert info["classes"]["Normal"] == {"images": 2, "lung_masks": 0, "infection_masks": 0}


def test_partially_missing_masks_and_other_suffixes(tmp_path):
    root = make_layout(tmp_path / "d", counts={"Train": 2})
    covid = root / "Train" / "COVID-19"
    (covid / "lung masks" / "covid-19_2.png").unlink()
    Image.fromarray(TINY).save(covid / "images" / "extra.jpg")
    Image.fromarray(TINY).save(covid / "lung masks" / "extra.png")  # same stem, other suffix
    (covid / "images" / "notes.txt").write_text("not an image")
    samples = {s.name: s for s in CovidQuDataset(root).samples("Train") if s.label == "COVID-19"}
    assert sorted(samples) == ["covid-19_1", "covid-19_2", "extra"]
    assert samples["covid-19_2"].lung_mask is None
    assert samples["covid-19_2"].infection_mask is not None
    assert samples["extra"].lung_mask.name == "extra.png"
    assert samples["extra"].infection_mask is None


def test_missing_class_is_counted_as_zero(tmp_path):
    root = make_layout(tmp_path / "d", counts={"Train": 2})
    shutil.rmtree(root / "Train" / "Normal")
    ds = CovidQuDataset(root)
    assert ds.counts()["Train"] == {"COVID-19": 2, "Non-COVID": 2, "Normal": 0}


# ---------------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------------
def test_not_a_dataset_names_folder_layout_and_contents(tmp_path):
    (tmp_path / "holiday photos").mkdir()
    (tmp_path / "readme.md").write_text("hi")
    with pytest.raises(DatasetError) as info:
        CovidQuDataset(tmp_path)
    text = str(info.value)
    assert "\n" not in text
    assert str(tmp_path) in text and "is not a COVID-QU-Ex folder" in text
    assert "'holiday photos'" in text and "'readme.md'" in text
    assert "{Train,Val,Test}/{COVID-19,Non-COVID,Normal}/{images,lung masks,infection masks}" in text
    assert info.value.exit_code == 7


def test_empty_and_missing_folders(tmp_path):
    with pytest.raises(DatasetError, match="found an empty folder"):
        CovidQuDataset(tmp_path)
    with pytest.raises(DatasetError, match="does not exist"):
        CovidQuDataset(tmp_path / "nope")
    f = tmp_path / "file.png"
    f.write_bytes(b"x")
    with pytest.raises(DatasetError, match="is a file"):
        resolve_root(f)


def test_split_folders_without_images(tmp_path):
    for label in CLASSES:
        (tmp_path / "Train" / label / "images").mkdir(parents=True)
    with pytest.raises(DatasetError) as info:
        CovidQuDataset(tmp_path)
    assert "no images" in str(info.value) and "download may be incomplete" in str(info.value)


def test_class_folder_without_images_folder(tmp_path):
    root = make_layout(tmp_path / "d", counts={"Train": 1})
    bad = root / "Train" / "Normal"
    shutil.rmtree(bad / "images")
    with pytest.raises(DatasetError) as info:
        CovidQuDataset(root).samples("Train")
    assert str(bad) in str(info.value) and "no 'images' folder" in str(info.value)
    assert "'lung masks'" in str(info.value)


# ---------------------------------------------------------------------------------------------
# CLI: covidedge data summary
# ---------------------------------------------------------------------------------------------
def test_cli_summary_table_and_json(infection_root):
    runner = CliRunner()
    res = runner.invoke(data_command, ["summary", str(infection_root.parent)])
    assert res.exit_code == 0, res.output
    lines = res.stdout.splitlines()
    assert lines[0] == f"dataset: {infection_root}  ({INFECTION_SUBSET})"
    assert lines[1].split() == ["split", "COVID-19", "Non-COVID", "Normal", "total", "lung", "masks",
                                "infection", "masks"]
    assert lines[2].split() == ["Train", "3", "3", "3", "9", "9", "9"]
    assert lines[3].split() == ["Val", "2", "2", "2", "6", "6", "6"]
    assert lines[4].split() == ["all", "5", "5", "5", "15", "15", "15"]

    res = runner.invoke(data_command, ["summary", str(infection_root), "--json"])
    assert res.exit_code == 0
    info = json.loads(res.stdout)
    assert info["root"] == str(infection_root) and info["images"] == 15
    assert info["splits"]["Val"]["classes"]["COVID-19"]["images"] == 2


def test_cli_summary_error_is_a_dataset_error(tmp_path):
    res = CliRunner().invoke(data_command, ["summary", str(tmp_path)])
    assert isinstance(res.exception, DatasetError)
    assert "is not a COVID-QU-Ex folder" in str(res.exception)


def test_cli_help_teaches():
    res = CliRunner().invoke(data_command, ["summary", "--help"])
    assert res.exit_code == 0 and "Example:" in res.stdout and "covidedge data summary" in res.stdout


# ---------------------------------------------------------------------------------------------
# The real dataset (skipped when absent)
# ---------------------------------------------------------------------------------------------
@pytest.mark.realdata
def test_real_data_counts_and_masks(real_data_root):
    ds = CovidQuDataset(real_data_root)
    counts = ds.counts()
    assert counts["Train"] == {"COVID-19": 1864, "Non-COVID": 932, "Normal": 932}
    assert counts["Val"] == {"COVID-19": 466, "Non-COVID": 233, "Normal": 233}
    for split in ("Train", "Val"):
        samples = ds.samples(split)
        for s in samples:
            assert s.lung_mask is not None and s.lung_mask.name == s.image.name
            assert s.infection_mask is not None and s.infection_mask.name == s.image.name
        # Sizes from the PNG headers (no decoding) for every sample.
        for s in samples:
            with Image.open(s.image) as im, Image.open(s.lung_mask) as lm, \
                    Image.open(s.infection_mask) as inf:
                assert im.size == lm.size == inf.size, s.name


@pytest.mark.realdata
def test_real_train_split_is_listed_from_the_folders_alone(real_data_root, monkeypatch):
    """Listing 3728 samples reads directory entries only: no file is opened, so it stays fast on
    any disk (a property, not a timing that a loaded CI machine would break)."""
    import builtins
    import io

    opened = []
    real_open = io.open
    for module in (builtins, io):  # open() and pathlib's io.open
        monkeypatch.setattr(module, "open", lambda *a, **k: opened.append(a[0]) or real_open(*a, **k))
    monkeypatch.setattr(Image, "open", lambda *a, **k: opened.append(a[0]) or pytest.fail("image opened"))
    samples = CovidQuDataset(real_data_root).samples("Train")
    assert len(samples) == 3728
    assert opened == [], f"listing opened {len(opened)} files, e.g. {opened[:2]}"
