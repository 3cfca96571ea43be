"""Checkpoints: round trips give identical outputs; anything else is refused in one line."""

from __future__ import annotations

import hashlib
import pickle

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from covidedge.errors import BadInputError, IncompatibleModelError  # noqa: E402
from covidedge.models.registry import create_model  # noqa: E402
from covidedge.models.wrapper import InferenceWrapper  # noqa: E402
from covidedge.spec import classifier_spec, segmenter_spec  # noqa: E402
from covidedge.formats.checkpoint import CHECKPOINT_FORMAT, checkpoint_sha256, save_checkpoint
from covidedge.models.loading import load_checkpoint



def _classifier(width=0.125):
    torch.manual_seed(1)
    model = create_model("xception", width_mult=width, drop_rate=0.2).eval()
    spec = classifier_spec(input_size=(64, 64), model_kwargs={"width_mult": width, "drop_rate": 0.2})
    return model, spec


def _segmenter():
    torch.manual_seed(2)
    model = create_model("resunet", base_width=8, depth=3).eval()
    spec = segmenter_spec(input_size=(32, 32), model_kwargs={"base_width": 8, "depth": 3})
    return model, spec


@pytest.mark.parametrize("make, size", [(_classifier, 64), (_segmenter, 32)])
def test_round_trip_gives_identical_outputs(tmp_path, make, size):
    model, spec = make()
    path = save_checkpoint(tmp_path / "m.pt", model, spec,
                           extra={"epoch": 3, "metrics": {"acc": np.float32(0.5)},
                                  "history": [{"epoch": 1, "loss": 1.0}], "arr": np.arange(3)})
    loaded, spec2, meta = load_checkpoint(path)
    assert spec2 == spec and spec2.model_kwargs == spec.model_kwargs
    assert not loaded.training
    x = torch.rand(2, 1, size, size)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))
    assert meta["epoch"] == 3 and meta["history"] == [{"epoch": 1, "loss": 1.0}]
    assert meta["metrics"]["acc"] == pytest.approx(0.5) and isinstance(meta["metrics"]["acc"], float)
    assert meta["arr"] == [0, 1, 2]
    assert meta["format"] == CHECKPOINT_FORMAT and meta["covidedge_version"]


def test_file_is_a_plain_dict_loadable_with_weights_only(tmp_path):
    model, spec = _classifier()
    save_checkpoint(tmp_path / "m.pt", model, spec, extra={"train_options": {"lr": 1e-3}})
    raw = torch.load(tmp_path / "m.pt", weights_only=True)
    assert raw["format"] == "covidedge-checkpoint-v1"
    assert raw["spec"]["input_size"] == [64, 64] and raw["spec"]["preprocessing"] == "gray-unit-bilinear-v1"
    assert raw["extra"]["train_options"] == {"lr": 1e-3}
    assert set(raw["state_dict"]) == set(model.state_dict())
    assert not (tmp_path / "m.pt.tmp").exists()


def test_inference_wrapper_is_saved_as_the_bare_model(tmp_path):
    model, spec = _classifier()
    save_checkpoint(tmp_path / "m.pt", InferenceWrapper(model, "classifier"), spec)
    loaded, _, _ = load_checkpoint(tmp_path / "m.pt")
    x = torch.rand(1, 1, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))


def test_optimizer_state_int_keys_survive(tmp_path):
    model, spec = _classifier()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model.train()
    model(torch.rand(2, 1, 64, 64)).sum().backward()
    opt.step()
    save_checkpoint(tmp_path / "m.pt", model, spec, extra={"optimizer": opt.state_dict()})
    _, _, meta = load_checkpoint(tmp_path / "m.pt")
    opt2 = torch.optim.AdamW(model.parameters(), lr=1e-3)
    opt2.load_state_dict(meta["optimizer"])
    assert len(opt2.state) == len(opt.state) > 0
    k = next(iter(opt.state_dict()["state"]))
    assert isinstance(k, int) and k in meta["optimizer"]["state"]


def test_sha256_is_that_of_the_bytes(tmp_path):
    model, spec = _segmenter()
    p = save_checkpoint(tmp_path / "s.pt", model, spec)
    assert checkpoint_sha256(p) == hashlib.sha256(p.read_bytes()).hexdigest()
    with pytest.raises(BadInputError):
        checkpoint_sha256(tmp_path / "none.pt")


def _one_line(exc) -> str:
    text = str(exc.value)
    assert "\n" not in text
    return text


def test_missing_file_is_bad_input(tmp_path):
    with pytest.raises(BadInputError) as e:
        load_checkpoint(tmp_path / "nope.pt")
    assert "not found" in _one_line(e) and "nope.pt" in str(e.value)
    assert e.value.exit_code == 3


def test_garbage_file_is_incompatible(tmp_path):
    p = tmp_path / "junk.pt"
    p.write_bytes(b"this is not a checkpoint\n" * 10)
    with pytest.raises(IncompatibleModelError) as e:
        load_checkpoint(p)
    assert "not a readable covidedge checkpoint" in _one_line(e)
    assert e.value.exit_code == 4


def test_other_torch_file_is_incompatible(tmp_path):
    model, _ = _classifier()
    p = tmp_path / "weights.pt"
    torch.save(model.state_dict(), p)  # a bare state dict, as other projects save them
    with pytest.raises(IncompatibleModelError) as e:
        load_checkpoint(p)
    assert "expected 'covidedge-checkpoint-v1'" in _one_line(e)


class _Evil:
    def __reduce__(self):
        return (print, ("pickled code ran",))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_pickled_objects_are_refused_not_run(tmp_path, capsys):
    p = tmp_path / "evil.pt"
    with open(p, "wb") as fh:
        pickle.dump({"format": CHECKPOINT_FORMAT, "x": _Evil()}, fh)
    with pytest.raises(IncompatibleModelError):
        load_checkpoint(p)
    assert "pickled code ran" not in capsys.readouterr().out


def test_weights_that_do_not_fit_the_spec(tmp_path):
    model, _ = _classifier(width=0.125)
    _, wider = _classifier(width=0.25)
    p = save_checkpoint(tmp_path / "m.pt", model, wider)
    with pytest.raises(IncompatibleModelError) as e:
        load_checkpoint(p)
    assert "weights do not fit the xception architecture" in _one_line(e)


def test_unstorable_extra_and_wrong_spec_are_refused(tmp_path):
    model, spec = _classifier()
    with pytest.raises(BadInputError, match="cannot be stored"):
        save_checkpoint(tmp_path / "m.pt", model, spec, extra={"x": object()})
    with pytest.raises(BadInputError, match="ModelSpec"):
        save_checkpoint(tmp_path / "m.pt", model, spec.to_dict())
    assert not (tmp_path / "m.pt").exists()
