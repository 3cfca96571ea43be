"""Calibration sets: stratified, deterministic manifests that pin every image by sha256."""

from __future__ import annotations

import hashlib
import json
import shutil

import numpy as np
import pytest

from covidedge.data.covidqu import CovidQuDataset
from covidedge.data.preprocess import PREPROCESSING_ID, preprocess
from covidedge.data.synth import make_synthetic_dataset
from covidedge.errors import BadInputError, DatasetError
from covidedge.export.calibration import (FORMAT, CalibrationSet, default_manifest_path,
                                          make_calibration_set, manifest_sha256)

SIZE = 48


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """A synthetic COVID-QU-Ex twin: 4 images per class in Train and Val."""
    return make_synthetic_dataset(tmp_path_factory.mktemp("synth") / "data", per_class=4,
                                  size=SIZE, splits=("Train", "Val"))


def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_manifest_content(root, tmp_path):
    cset = make_calibration_set(root, 6, input_size=SIZE, out=tmp_path / "c.json")
    m = json.loads((tmp_path / "c.json").read_text())
    assert m["format"] == FORMAT and m["split"] == "Train" and m["seed"] == 0
    assert m["data_root"] == str(root)
    assert m["input_size"] == [SIZE, SIZE] and m["preprocessing"] == PREPROCESSING_ID
    assert m["class_balance"] == {"COVID-19": 2, "Non-COVID": 2, "Normal": 2}
    assert m["count"] == len(m["images"]) == 6 and "created" in m
    for e in m["images"]:
        assert not e["path"].startswith("/")  # relative to the data root
        assert "/Train/" in "/" + e["path"] and e["label"] in e["path"]
        assert e["sha256"] == _sha(root / e["path"])
    assert m["sha256"] == manifest_sha256(m) == cset.sha256
    assert [p.name for p in cset.images] == [e["path"].split("/")[-1] for e in m["images"]]
    assert cset.path == tmp_path / "c.json" and len(cset) == 6


def test_an_existing_manifest_is_kept_unless_asked(root, tmp_path):
    """The API defaulted to overwrite=True; the same set drawn again keeps its file (an export
    from a folder twice), another set is refused, and replaced only with overwrite=True."""
    from covidedge.fileio import OutputExistsError

    out = tmp_path / "c.json"
    first = make_calibration_set(root, 6, input_size=SIZE, out=out)
    out.write_text(out.read_text().replace('"created": "', '"created": "kept '))  # unhashed: still intact
    before = out.read_bytes()
    again = make_calibration_set(root, 6, input_size=SIZE, out=out)
    assert again.sha256 == first.sha256 and again.path == out and out.read_bytes() == before
    for other in ({"seed": 1}, {"input_size": SIZE + 8}):
        with pytest.raises(OutputExistsError, match="calibration manifest already exists"):
            make_calibration_set(root, 6, **dict({"input_size": SIZE}, **other), out=out)
        assert out.read_bytes() == before
    with pytest.raises(OutputExistsError):
        first.save(out)
    replaced = make_calibration_set(root, 6, seed=1, input_size=SIZE, out=out, overwrite=True)
    assert json.loads(out.read_text())["sha256"] == replaced.sha256 != first.sha256


def test_stratified_deterministic_and_seeded(root, tmp_path):
    a = make_calibration_set(root, 7, seed=3, input_size=SIZE, out=tmp_path / "a.json")
    b = make_calibration_set(root, 7, seed=3, input_size=SIZE, out=tmp_path / "b.json")
    c = make_calibration_set(root, 7, seed=4, input_size=SIZE, out=tmp_path / "c.json")
    # the remainder goes to the classes in order: 3 + 2 + 2
    assert a.class_balance == {"COVID-19": 3, "Non-COVID": 2, "Normal": 2}
    assert a.manifest["images"] == b.manifest["images"] and a.sha256 == b.sha256
    assert c.manifest["images"] != a.manifest["images"] and c.sha256 != a.sha256
    # the hash leaves out the creation time and where the data sits, nothing else
    edited = dict(a.manifest, created="1999-01-01T00:00:00", data_root="/elsewhere")
    assert manifest_sha256(edited) == a.sha256
    assert manifest_sha256(dict(a.manifest, seed=99)) != a.sha256


def test_unequal_classes_fill_from_the_others(tmp_path):
    data = make_synthetic_dataset(tmp_path / "d", per_class=4, size=32, splits=("Train",))
    normal = data / "Infection Segmentation Data" / "Train" / "Normal" / "images"
    for p in sorted(normal.iterdir())[1:]:
        p.unlink()  # Normal keeps one image
    cset = make_calibration_set(data, 9, input_size=32, out=tmp_path / "c.json")
    assert cset.class_balance == {"COVID-19": 4, "Non-COVID": 4, "Normal": 1}
    with pytest.raises(BadInputError, match="count=10, but split 'Train' has only 9 images"):
        make_calibration_set(data, 10, input_size=32, out=tmp_path / "x.json")


def test_default_path_and_other_split(root, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cset = make_calibration_set(root, 3, split="val", seed=2, input_size=SIZE)
    assert cset.split == "Val"
    assert cset.path == default_manifest_path("data", "Val", 3, 2)
    assert cset.path.as_posix() == "calibration/data-val-3-seed2.json"
    assert (tmp_path / "calibration" / "data-val-3-seed2.json").is_file()
    assert all("/Val/" in "/" + e["path"] for e in cset.manifest["images"])


def test_load_verifies_and_batches_through_the_one_preprocessing(root, tmp_path):
    made = make_calibration_set(root, 5, input_size=SIZE, out=tmp_path / "c.json")
    cset = CalibrationSet.load(tmp_path / "c.json")
    assert cset.sha256 == made.sha256 and cset.input_size == (SIZE, SIZE)
    batches = list(cset.batches(2))
    assert [b["image"].shape for b in batches] == [(2, 1, SIZE, SIZE)] * 2 + [(1, 1, SIZE, SIZE)]
    assert all(b["image"].dtype == np.float32 for b in batches)
    first = preprocess(cset.images[0], size=(SIZE, SIZE))
    np.testing.assert_array_equal(batches[0]["image"][:1], first)
    with pytest.raises(BadInputError, match="batch size 0"):
        next(cset.batches(0))


def test_changed_missing_or_moved_images_are_named(root, tmp_path):
    data = tmp_path / "copy"
    shutil.copytree(root, data)
    make_calibration_set(data, 4, input_size=SIZE, out=tmp_path / "c.json")
    m = json.loads((tmp_path / "c.json").read_text())
    victim = data / m["images"][1]["path"]

    victim.write_bytes(victim.read_bytes() + b"\0")  # one byte more: a different file
    with pytest.raises(BadInputError, match=r"calibration image changed since the manifest was made") as exc:
        CalibrationSet.load(tmp_path / "c.json")
    assert victim.name in str(exc.value) and "covidedge calibrate" in str(exc.value)

    victim.unlink()
    with pytest.raises(BadInputError, match="calibration image is missing") as exc:
        CalibrationSet.load(tmp_path / "c.json")
    assert victim.name in str(exc.value)

    # the dataset moved: the manifest's root is gone, data_root= points at the new place
    shutil.copytree(root, tmp_path / "moved")
    shutil.rmtree(data)
    with pytest.raises(BadInputError, match="calibration data root .* does not exist"):
        CalibrationSet.load(tmp_path / "c.json")
    moved = CalibrationSet.load(tmp_path / "c.json", data_root=tmp_path / "moved")
    assert moved.sha256 == m["sha256"] and len(moved) == 4


def test_edited_or_foreign_manifests_are_refused(root, tmp_path):
    make_calibration_set(root, 3, input_size=SIZE, out=tmp_path / "c.json")
    m = json.loads((tmp_path / "c.json").read_text())
    m["images"] = m["images"][:2]
    (tmp_path / "edited.json").write_text(json.dumps(m))
    with pytest.raises(BadInputError, match="does not match its sha256.*it was edited"):
        CalibrationSet.load(tmp_path / "edited.json")
    (tmp_path / "other.json").write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(BadInputError, match="is not a covidedge calibration manifest"):
        CalibrationSet.load(tmp_path / "other.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(BadInputError, match="not readable JSON"):
        CalibrationSet.load(tmp_path / "bad.json")
    with pytest.raises(BadInputError, match="calibration manifest not found"):
        CalibrationSet.load(tmp_path / "none.json")


def test_bad_arguments(root, tmp_path):
    with pytest.raises(BadInputError, match="count=0, expected at least 1"):
        make_calibration_set(root, 0, out=tmp_path / "x.json")
    with pytest.raises(BadInputError, match="seed=-1"):
        make_calibration_set(root, 2, seed=-1, out=tmp_path / "x.json")
    with pytest.raises(DatasetError, match="has no split 'Test'"):
        make_calibration_set(root, 2, split="Test", out=tmp_path / "x.json")
    with pytest.raises(DatasetError):
        make_calibration_set(tmp_path, 2, out=tmp_path / "x.json")
    assert not (tmp_path / "x.json").exists()


def test_calibrate_cli(root, tmp_path, capsys):
    from covidedge.cli.main import main

    out = tmp_path / "m.json"
    with pytest.raises(SystemExit) as exc:
        main(["calibrate", "--data", str(root), "--count", "6", "--input-size", str(SIZE),
              "--out", str(out), "--json"])
    assert exc.value.code == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["manifest"] == str(out) and summary["count"] == 6
    assert summary["sha256"] == CalibrationSet.load(out).sha256
    with pytest.raises(SystemExit) as exc:
        main(["calibrate", "--data", str(root), "--count", "99", "--out", str(tmp_path / "n.json")])
    assert exc.value.code == BadInputError.exit_code
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "has only 12 images" in err and len(err.splitlines()) == 1


@pytest.mark.realdata
def test_real_dataset_manifest(real_data_root, tmp_path):
    cset = make_calibration_set(real_data_root, 9, seed=1, out=tmp_path / "real.json")
    assert cset.class_balance == {"COVID-19": 3, "Non-COVID": 3, "Normal": 3}
    assert cset.input_size == (256, 256)
    train = {s.image for s in CovidQuDataset(real_data_root).samples("Train")}
    assert set(cset.images) <= train
    batch = next(CalibrationSet.load(tmp_path / "real.json").batches(9))["image"]
    assert batch.shape == (9, 1, 256, 256) and 0.0 <= batch.min() and batch.max() <= 1.0
