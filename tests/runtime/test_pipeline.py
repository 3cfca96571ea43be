"""Pipeline / Classifier / Segmenter on tiny hand-made ONNX graphs whose outputs are known exactly,
plus one run on tiny real models exported from checkpoints.

The hand-made segmenter marks as lungs every pixel darker than 0.9 and as infection every pixel
within 0.2 of 0.7, so a drawn "X-ray" (white body 1.0, lungs 0.2, an opacity 0.7) has masks and
fractions that the test can count by hand.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from covidedge.errors import BadInputError, IncompatibleModelError
from covidedge.backends.onnxruntime import OrtRunner
from covidedge.runtime.pipeline import Classifier, Pipeline, Segmenter
from covidedge.prediction import Failure, Prediction
from covidedge.spec import classifier_spec
from tests.graphs import tiny_checkpoint
from tests.graphs import (SIZE, expected_logits, expected_masks, tiny_classifier_onnx,
                                        tiny_models, xray)

# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return tiny_models(tmp_path_factory.mktemp("models"))


@pytest.fixture()
def pipe(models):
    cls, seg = models
    with Pipeline(classifier=OrtRunner(cls), segmenter=OrtRunner(seg)) as p:
        yield p


def iou(a, b):
    return (a & b).sum() / (a | b).sum()


def softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def test_predict_gives_class_masks_fractions_and_timings(pipe, tmp_path):
    img = xray()
    path = tmp_path / "a.png"
    Image.fromarray(img).save(path)
    r = pipe.predict(path)
    assert isinstance(r, Prediction) and r.source == str(path) and r.image_size == (SIZE, SIZE)

    x = (img.astype(np.float32) / 255.0)[None, None]
    probs = softmax(expected_logits(x))[0]
    assert list(r.probabilities) == ["COVID-19", "Non-COVID", "Normal"]
    np.testing.assert_allclose(list(r.probabilities.values()), probs, rtol=1e-5)
    assert r.label == ["COVID-19", "Non-COVID", "Normal"][int(np.argmax(probs))]

    lungs, infection = expected_masks(img)
    assert r.lung_mask.dtype == bool and r.lung_mask.shape == img.shape
    np.testing.assert_array_equal(r.lung_mask, lungs)
    np.testing.assert_array_equal(r.infection_mask, infection)
    # Counted by hand: two lung fields of 24x8 px; the opacity is 8x4 px inside the left one.
    assert r.lung_fraction == pytest.approx(2 * 24 * 8 / (32 * 32))
    assert r.infected_fraction == pytest.approx(8 * 4 / (2 * 24 * 8))

    assert set(r.timings_ms) == {"decode", "preprocess", "inference", "postprocess", "total"}
    assert all(v >= 0 for v in r.timings_ms.values())
    assert r.timings_ms["total"] == pytest.approx(sum(v for k, v in r.timings_ms.items() if k != "total"))


def test_masks_come_back_at_the_original_size_for_any_mode(pipe, tmp_path):
    base = xray(400, 512)  # H x W; the model sees 32 x 32
    rgb = np.repeat(base[:, :, None], 3, axis=2)
    cases = {
        "gray.png": Image.fromarray(base),
        "rgb.jpg": Image.fromarray(rgb),
        "rgba.png": Image.fromarray(np.dstack([rgb, np.full(base.shape, 255, np.uint8)])),
        "palette.png": Image.fromarray(rgb).convert("P"),
    }
    lungs, infection = expected_masks(base)
    for name, im in cases.items():
        path = tmp_path / name
        im.save(path, quality=95) if name.endswith(".jpg") else im.save(path)
        r = pipe.predict(path)
        assert r.image_size == (400, 512), name
        assert r.lung_mask.shape == (400, 512) and r.infection_mask.shape == (400, 512), name
        # The model sees a blurred 32x32 copy, so edges move (the lungs grow into the blurred
        # body edge); the regions must still overlap the drawn ones closely.
        assert iou(r.lung_mask, lungs) > 0.85, name
        assert iou(r.infection_mask, infection) > 0.9, name
        assert r.infected_fraction == pytest.approx(8 * 4 / (2 * 24 * 8), abs=0.03), name


def test_16_bit_png_gives_the_same_prediction_as_8_bit(pipe, tmp_path):
    rng = np.random.default_rng(1)
    img8 = np.clip(xray(64, 48).astype(int) + rng.integers(-20, 20, (64, 48)), 0, 255).astype(np.uint8)
    p8, p16 = tmp_path / "x8.png", tmp_path / "x16.png"
    Image.fromarray(img8).save(p8)
    Image.fromarray(img8.astype(np.uint16) * 257).save(p16)
    assert Image.open(p16).mode.startswith("I;16")
    r8, r16 = pipe.predict(p8), pipe.predict(p16)
    assert r8.label == r16.label
    np.testing.assert_allclose(list(r8.probabilities.values()), list(r16.probabilities.values()), atol=1e-6)
    np.testing.assert_array_equal(r8.lung_mask, r16.lung_mask)
    np.testing.assert_array_equal(r8.infection_mask, r16.infection_mask)


def test_predict_accepts_arrays_and_raises_for_a_bad_file(pipe, tmp_path):
    r = pipe.predict(xray())
    assert r.source == "<image 0>" and r.lung_mask.shape == (SIZE, SIZE)
    bad = tmp_path / "bad.png"
    bad.write_text("not an image")
    with pytest.raises(BadInputError, match="bad.png"):
        pipe.predict(bad)


def test_predict_many_keeps_order_batches_and_records_failures(models, tmp_path):
    cls, seg = models
    paths = []
    for i in range(7):
        p = tmp_path / f"img{i}.png"
        if i in (2, 5):
            p.write_bytes(b"" if i == 2 else b"garbage")
        else:
            Image.fromarray(np.roll(xray(), i, axis=1)).save(p)
        paths.append(p)
    calls = []
    runner = OrtRunner(cls)
    orig = runner.infer
    runner.infer = lambda x: calls.append(x.shape[0]) or orig(x)
    with Pipeline(classifier=runner, segmenter=OrtRunner(seg), batch_size=3) as p:
        results = list(p.predict_many(paths))
    assert [r.source for r in results] == [str(p) for p in paths]
    assert [r.ok for r in results] == [True, True, False, True, True, False, True]
    assert calls == [2, 2, 1]  # batches of 3 items, failed decodes left out
    empty, garbage = results[2], results[5]
    assert isinstance(empty, Failure) and empty.exit_code == 3 and empty.stage == "decode"
    assert "img2.png" in empty.error and "empty" in empty.error
    assert "img5.png" in garbage.error
    json.dumps([r.to_dict() for r in results])  # JSON-safe, masks left out
    assert "lung_mask" not in results[0].to_dict()


def test_static_batch_model_is_padded_and_split(models, tmp_path):
    path = tmp_path / "static.onnx"
    tiny_classifier_onnx(path, size=SIZE, batch=2)
    imgs = [np.roll(xray(), i, axis=0) for i in range(3)]
    with Pipeline(classifier=OrtRunner(path)) as p:
        got = [r.probabilities for r in p.predict_many(imgs, batch_size=3)]
    with Pipeline(classifier=OrtRunner(models[0])) as p:
        want = [r.probabilities for r in p.predict_many(imgs, batch_size=1)]
    for g, w in zip(got, want):
        np.testing.assert_allclose(list(g.values()), list(w.values()), rtol=1e-6)


def test_wrong_task_is_refused_before_any_image_is_read(models):
    cls, seg = models
    with pytest.raises(IncompatibleModelError, match=r"seg.onnx.*segmenter.*--segmenter"):
        Classifier(OrtRunner(seg))
    with pytest.raises(IncompatibleModelError, match=r"cls.onnx.*classifier.*--classifier"):
        Pipeline(segmenter=OrtRunner(cls))
    # Pipeline() with no model runs the default models: tests/runtime/test_defaults.py


def test_preprocessing_mismatch_is_refused(tmp_path):
    path = tmp_path / "other.onnx"
    tiny_classifier_onnx(path, size=SIZE, spec=classifier_spec(
        model_name="tiny", input_size=(SIZE, SIZE), preprocessing="rgb-imagenet-v0"))
    with pytest.raises(IncompatibleModelError, match="rgb-imagenet-v0"):
        Classifier(OrtRunner(path))


def test_threshold_changes_masks_and_is_validated(models):
    seg = models[1]
    img = np.full((SIZE, SIZE), 0.88, np.float32)  # lungs prob = sigmoid(0.4) = 0.599
    assert Segmenter(OrtRunner(seg)).predict(img).lung_mask.all()
    assert not Segmenter(OrtRunner(seg), threshold=0.7).predict(img).lung_mask.any()
    with pytest.raises(BadInputError, match="threshold"):
        Segmenter(OrtRunner(seg), threshold=1.5)


def test_single_model_results_leave_the_other_fields_empty(models):
    cls, seg = models
    c = Classifier(OrtRunner(cls)).predict(xray())
    assert c.label is not None and c.lung_mask is None and c.infected_fraction is None
    s = Segmenter(OrtRunner(seg)).predict(xray())
    assert s.label is None and s.probabilities is None and s.lung_fraction > 0


def test_context_manager_activates_once_and_leaves_active_runners_alone(models):
    cls, seg = models
    r_cls, r_seg = OrtRunner(cls), OrtRunner(seg).activate()
    session = r_seg.session
    with Pipeline(classifier=r_cls, segmenter=r_seg) as p:
        p.predict(xray())
        p.predict(xray())
        assert r_cls.is_active and r_seg.session is session
    assert not r_cls.is_active and r_seg.is_active


def test_out_dir_writes_masks_and_overlay_with_unique_names(pipe, tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    for d in ("a", "b"):
        Image.fromarray(xray(48, 40)).save(tmp_path / d / "same.png")
    out = tmp_path / "out"
    results = list(pipe.predict_many([tmp_path / "a" / "same.png", tmp_path / "b" / "same.png"],
                                     out_dir=out))
    names = sorted(p.name for p in out.iterdir())
    assert names == ["same_2_infection.png", "same_2_lungs.png", "same_2_overlay.png",
                     "same_infection.png", "same_lungs.png", "same_overlay.png"]
    r = results[0]
    assert r.outputs == {k: str(out / f"same_{k}.png") for k in ("lungs", "infection", "overlay")}
    lungs = np.asarray(Image.open(out / "same_lungs.png"))
    assert lungs.dtype == np.uint8 and set(np.unique(lungs)) <= {0, 255}
    np.testing.assert_array_equal(lungs > 0, r.lung_mask)
    overlay = Image.open(out / "same_overlay.png")
    assert overlay.mode == "RGB" and overlay.size == (40, 48)
    assert r.to_dict()["outputs"]["overlay"].endswith("same_overlay.png")


def test_results_stream_out_one_by_one_within_a_batch(pipe, tmp_path):
    for i in range(3):
        Image.fromarray(np.roll(xray(48, 40), i, axis=1)).save(tmp_path / f"s{i}.png")
    out = tmp_path / "out"
    stream = pipe.predict_many([tmp_path / f"s{i}.png" for i in range(3)], batch_size=3, out_dir=out)
    first = next(stream)
    # the first image of the batch is finished and on disk before the others are postprocessed
    assert first.ok and first.source.endswith("s0.png")
    assert sorted(p.name for p in out.iterdir()) == ["s0_infection.png", "s0_lungs.png", "s0_overlay.png"]
    assert [r.source[-6:] for r in stream] == ["s1.png", "s2.png"]


def test_batch_size_is_bounded(models):
    from covidedge.spec import MAX_BATCH

    with pytest.raises(BadInputError, match=f"batch size {MAX_BATCH + 1} is above {MAX_BATCH} images"):
        Pipeline(classifier=models[0], batch_size=MAX_BATCH + 1)


def test_no_overlay_writes_masks_only(pipe, tmp_path):
    pipe.predict(xray(), out_dir=tmp_path, overlay=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["image_0_infection.png", "image_0_lungs.png"]


def test_package_exports_the_api():
    import covidedge

    assert covidedge.Pipeline is Pipeline and covidedge.Classifier is Classifier
    assert covidedge.Segmenter is Segmenter


# ---------------------------------------------------------------------------------------------
# Tiny real models: checkpoint -> ONNX, run from their paths
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    torch = pytest.importorskip("torch", reason="torch is needed to build and export test models")
    from covidedge.export import export_model

    folder = tmp_path_factory.mktemp("exported")
    torch.manual_seed(0)
    out = {}
    for task, kw in (("classifier", {"width_mult": 0.25}), ("segmenter", {})):
        ckpt = tiny_checkpoint(folder / f"{task}.pt", task, 64, **kw)
        export_model(ckpt, folder / f"{task}.onnx", precision="fp32")
        out[task] = (ckpt, folder / f"{task}.onnx")
    return out


def test_exported_models_run_from_their_paths_and_match_the_checkpoints(exported, tmp_path):
    img = tmp_path / "wide.png"
    Image.fromarray(xray(100, 80)).save(img)
    with Pipeline(classifier=str(exported["classifier"][1]),
                  segmenter=str(exported["segmenter"][1])) as p:
        assert {m.backend for m in p.models} == {"onnxruntime"}
        onnx_result = p.predict(img)
    assert onnx_result.lung_mask.shape == (100, 80) and onnx_result.infection_mask.shape == (100, 80)
    assert sum(onnx_result.probabilities.values()) == pytest.approx(1.0, abs=1e-5)
    assert 0.0 <= onnx_result.lung_fraction <= 1.0 and 0.0 <= onnx_result.infected_fraction <= 1.0

    with Pipeline(classifier=exported["classifier"][0], segmenter=exported["segmenter"][0]) as p:
        assert {m.backend for m in p.models} == {"torch"}
        torch_result = p.predict(img)
    assert torch_result.label == onnx_result.label
    np.testing.assert_allclose(list(torch_result.probabilities.values()),
                               list(onnx_result.probabilities.values()), atol=1e-4)
    assert (torch_result.lung_mask == onnx_result.lung_mask).mean() > 0.99
    assert (torch_result.infection_mask == onnx_result.infection_mask).mean() > 0.99


def test_masks_are_the_one_rule_at_the_image_size(models):
    from covidedge.data.preprocess import preprocess
    from covidedge.runtime.postprocess import lung_regions, segmentation_masks

    img = xray(2 * SIZE, 2 * SIZE)
    img[58:64, 58:64] = 51  # a lung-like island outside the lung fields
    seg = Segmenter(OrtRunner(models[1]))
    with seg:
        result = seg.predict(img)
        p = seg.run(preprocess(img, size=(SIZE, SIZE)))[0]
    lungs, infection = segmentation_masks(p[0], p[1], seg.threshold, img.shape)
    np.testing.assert_array_equal(result.lung_mask, lungs)
    np.testing.assert_array_equal(result.infection_mask, infection)
    assert np.count_nonzero(lung_regions(result.lung_mask)[1]) == 2 and not result.lung_mask[58:, 58:].any()


def test_infection_mask_is_empty_where_the_classifier_rules_covid_out(models, tmp_path, monkeypatch):
    import covidedge.runtime.postprocess as post

    cls, seg = models
    path = tmp_path / "a.png"
    Image.fromarray(xray()).save(path)
    with Pipeline(segmenter=OrtRunner(seg)) as alone:
        ref = alone.predict(path)
    assert ref.infection_mask.any() and ref.infected_fraction > 0
    for gate, empty in ((0.0, False), (1.01, True)):  # never gated; always gated
        monkeypatch.setattr(post, "COVID_GATE", gate)
        with Pipeline(classifier=OrtRunner(cls), segmenter=OrtRunner(seg)) as p:
            r = p.predict(path)
        np.testing.assert_array_equal(r.lung_mask, ref.lung_mask)  # the lungs never are
        if empty:
            assert not r.infection_mask.any() and r.infected_fraction == 0.0
        else:
            np.testing.assert_array_equal(r.infection_mask, ref.infection_mask)
