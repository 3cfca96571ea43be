import numpy as np
import pytest

from covidedge.errors import BadInputError, RuntimeFailure
from covidedge.backends.base import Runner
from covidedge.spec import classifier_spec


class EchoRunner(Runner):
    backend = "echo"

    def _activate(self):
        self.activations = getattr(self, "activations", 0) + 1

    def _infer(self, x):
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
