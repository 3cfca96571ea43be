import numpy as np
import pytest

from covidedge.errors import BadInputError, RuntimeFailure
from covidedge.backends.base import Runner, infer_fitted
from covidedge.backends.onnxruntime import self_check
from covidedge.spec import classifier_spec


class EchoRunner(Runner):
    backend = "echo"

    def _activate(self):
        self.activations = getattr(self, "activations", 0) + 1

    def _infer(self, x):
        self.batches = getattr(self, "batches", []) + [x.shape[0]]
        return {"logits": x.mean(axis=(1, 2, 3))[:, None].repeat(3, 1), "probabilities": x[:, 0, 0, :3]}


def make(**kw):
    return EchoRunner(classifier_spec(input_size=(4, 4)), "model.echo", **kw)


def test_infer_requires_activation():
    with pytest.raises(RuntimeFailure, match="not active"):
        make().infer(np.zeros((1, 1, 4, 4), np.float32))


def test_context_manager_activates_once_and_deactivates():
    r = make()
    with r as active:
        assert active.is_active
        active.activate()
        out = active.infer(np.ones((2, 1, 4, 4), np.float32))
        assert out["logits"].shape == (2, 3)
        assert set(active.last_timings_ms) == {"total"}
    assert not r.is_active
    assert r.activations == 1


@pytest.mark.parametrize("x, message", [
    (np.zeros((1, 1, 5, 4), np.float32), r"input 'image' has shape \(1, 1, 5, 4\), expected \(N, 1, 4, 4\)"),
    (np.zeros((1, 4, 4), np.float32), "expected"),
    (np.zeros((1, 1, 4, 4), np.int32), "dtype int32, expected float32"),
    ([[0.0]], "is a list, expected a numpy array"),
    (np.full((1, 1, 4, 4), np.nan, np.float32), "NaN or infinite"),
])
def test_input_checks_name_tensor_and_expectation(x, message):
    with make() as r, pytest.raises(BadInputError, match=message):
        r.infer(x)


def test_feed_dict_must_name_the_input():
    with make() as r:
        r.infer({"image": np.zeros((1, 1, 4, 4), np.float32)})
        with pytest.raises(BadInputError, match=r"feed has tensors \['input'\], expected exactly \['image'\]"):
            r.infer({"input": np.zeros((1, 1, 4, 4), np.float32)})


def test_batch_range_is_enforced():
    with make(max_batch=2) as r:
        r.infer(np.zeros((2, 1, 4, 4), np.float32))
        with pytest.raises(BadInputError, match=r"batch 3, this model accepts batch 1..2"):
            r.infer(np.zeros((3, 1, 4, 4), np.float32))


def test_float64_is_converted():
    with make() as r:
        out = r.infer(np.full((1, 1, 4, 4), 0.5))
        assert out["logits"].dtype == np.float32


# -- batch fitting -----------------------------------------------------------------------------
def _numbered(n):
    """n images, image i filled with the value i + 1 (so each output row says which image it is)."""
    return np.arange(1, n + 1, dtype=np.float32)[:, None, None, None] * np.ones((n, 1, 4, 4), np.float32)


@pytest.mark.parametrize("lo, hi, n, batches", [
    (1, None, 7, [7]),        # any batch: one call, as it is
    (1, 3, 7, [3, 3, 1]),     # split to the largest batch
    (4, 4, 9, [4, 4, 4]),     # a fixed batch: the last piece (1 image) padded to 4
    (2, 8, 1, [2]),           # below the smallest batch: padded
    (2, 3, 5, [3, 2]),
])
def test_infer_fitted_splits_pads_and_drops_the_padding(lo, hi, n, batches):
    with make(min_batch=lo, max_batch=hi) as r:
        out = infer_fitted(r, _numbered(n))
        assert r.batches == batches
    assert out["logits"].shape == (n, 3) and out["probabilities"].shape == (n, 3)
    np.testing.assert_array_equal(out["logits"][:, 0], np.arange(1, n + 1))  # every image once, in order


def test_infer_fitted_pads_with_copies_of_the_last_image():
    class Seen(EchoRunner):
        def _infer(self, x):
            self.seen = x.copy()
            return super()._infer(x)

    with Seen(classifier_spec(input_size=(4, 4)), "model.echo", min_batch=3, max_batch=3) as r:
        out = infer_fitted(r, _numbered(4))
    assert r.seen.shape == (3, 1, 4, 4) and (r.seen[:, 0, 0, 0] == [4, 4, 4]).all()  # image 4, twice more
    np.testing.assert_array_equal(out["logits"][:, 0], [1, 2, 3, 4])


def test_infer_fitted_leaves_input_errors_to_the_runner():
    with make(max_batch=2) as r, pytest.raises(BadInputError, match="NaN or infinite"):
        infer_fitted(r, np.full((3, 1, 4, 4), np.nan, np.float32))


# -- the build's self-check --------------------------------------------------------------------
def _graph(tmp_path):
    from tests.graphs import tiny_precision_onnx

    src = tmp_path / "src.onnx"
    return src, tiny_precision_onnx(src, "fp32", "classifier", 16, None)


def test_self_check_moves_a_matching_engine_into_place(tmp_path):
    from covidedge.backends.onnxruntime import OrtRunner

    src, spec = _graph(tmp_path)
    tmp, out = tmp_path / "e.tmp.onnx", tmp_path / "e.onnx"
    tmp.write_bytes(src.read_bytes())
    check = self_check(OrtRunner(tmp, spec=spec), src, "fp32", {"fp32": 1e-6}, batch=2, out=out,
                       engine_name="copied")
    assert out.is_file() and not tmp.exists()
    assert check["batch"] == 2 and check["max_abs_diff"] == {"logits": 0.0, "probabilities": 0.0}


def test_self_check_deletes_an_engine_past_the_limit(tmp_path):
    from covidedge.backends.onnxruntime import OrtRunner

    class Shifted(OrtRunner):
        def _infer(self, x):
            out = super()._infer(x)
            return {**out, "probabilities": out["probabilities"] + 0.25}

    src, spec = _graph(tmp_path)
    tmp, out = tmp_path / "e.tmp.onnx", tmp_path / "e.onnx"
    tmp.write_bytes(src.read_bytes())
    with pytest.raises(RuntimeFailure) as err:
        self_check(Shifted(tmp, spec=spec), src, "fp16", {"fp16": 1e-2}, batch=1, out=out, engine_name="shifted")
    assert str(err.value) == (f"{out}: the shifted engine's probabilities differ from ONNX Runtime's on its "
                              "source graph by 0.25 (limit 0.01 for fp16)")
    assert not tmp.exists() and not out.exists()


@pytest.mark.parametrize("moved,passes", [(20, True), (5000, False)])
def test_a_segmenters_self_check_counts_pixels_past_the_limit(tmp_path, moved, passes):
    # int8 kernels of two runtimes requantise a few pixels one step apart (OpenVINO against ONNX
    # Runtime on the shipped int8 U-Net); a few pixels far off pass, most pixels off do not
    from covidedge.backends.onnxruntime import OrtRunner
    from tests.graphs import tiny_precision_onnx

    class FewPixels(OrtRunner):
        def _infer(self, x):
            out = super()._infer(x)
            p = out["probabilities"].copy()
            p.reshape(-1)[:moved] += 0.3
            return {**out, "probabilities": p}

    src = tmp_path / "seg.onnx"
    spec = tiny_precision_onnx(src, "fp32", "segmenter", 64, None)  # 2 x 64 x 64 = 8192 values per image
    tmp, out = tmp_path / "e.tmp.onnx", tmp_path / "e.onnx"
    tmp.write_bytes(src.read_bytes())
    if passes:
        check = self_check(FewPixels(tmp, spec=spec), src, "int8", {"int8": 5e-2}, batch=1, out=out,
                           engine_name="few")
        assert out.is_file() and check["share_past_limit"] == pytest.approx(20 / 8192)
    else:
        with pytest.raises(RuntimeFailure, match=r"by more than 0.05 on 61.04% of the pixels"):
            self_check(FewPixels(tmp, spec=spec), src, "int8", {"int8": 5e-2}, batch=1, out=out,
                       engine_name="many")
        assert not out.exists()
