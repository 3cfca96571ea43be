"""Auxiliary mask supervision of the classifier: a training-only head, never part of the model."""

from __future__ import annotations


import pytest

torch = pytest.importorskip("torch")

from covidedge.errors import BadInputError  # noqa: E402
from covidedge.formats.checkpoint import read_checkpoint  # noqa: E402
from covidedge.models.xception import xception  # noqa: E402
from covidedge.train.amp import AmpPlan  # noqa: E402
from covidedge.train.auxmasks import MASK_SCALE, AuxMaskSupervision  # noqa: E402
from covidedge.train.loop import train_classifier  # noqa: E402

CLS = dict(epochs=2, batch_size=4, image_size=64, width_mult=0.125, progress=False, bn_images=8)


def _plan():
    return AmpPlan(mode="off", dtype="fp32", device_type="cpu", channels_last=False, grad_scaler=False)


def test_head_learns_from_the_masks_and_reaches_the_network():
    torch.manual_seed(0)
    model = xception(width_mult=0.125).train()
    aux = AuxMaskSupervision(model, weight=0.5, device="cpu")
    x = torch.rand(2, 1, 64, 64)
    masks = torch.zeros(2, 2, 64, 64)
    masks[:, 0, 8:56, 8:30] = 1.0
    model(x)
    loss = aux.loss(masks, _plan())
    assert loss.ndim == 0 and torch.isfinite(loss) and float(loss.detach()) > 0
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in aux.parameters())
    assert model.stem[0].weight.grad.abs().sum() > 0  # the mask loss trains the classifier too
    assert model.fc.weight.grad is None  # and not its head
    with pytest.raises(RuntimeError, match="no training forward pass"):
        aux.loss(masks, _plan())  # the features are used once


def test_hook_keeps_nothing_outside_training_steps():
    model = xception(width_mult=0.125)
    aux = AuxMaskSupervision(model, weight=1.0, device="cpu")
    model.eval()
    model(torch.rand(1, 1, 64, 64))
    model.train()
    with torch.no_grad():  # BatchNorm re-estimation
        model(torch.rand(2, 1, 64, 64))
    assert aux._features is None
    aux.close()
    model(torch.rand(2, 1, 64, 64))
    assert aux._features is None
    assert MASK_SCALE == 4


def test_aux_run_exports_the_plain_network_and_resumes_exactly(data_root, tmp_path):
    plain = train_classifier(data_root, tmp_path / "plain", **CLS)
    run = train_classifier(data_root, tmp_path / "aux", aux_masks=0.5, **CLS)
    a = read_checkpoint(plain.best_checkpoint)
    b = read_checkpoint(run.best_checkpoint)
    assert a["state_dict"].keys() == b["state_dict"].keys()  # no head in the shipped model
    assert b["extra"]["train_options"]["aux_masks"] == 0.5
    assert "aux_head" not in b["extra"]
    last = read_checkpoint(run.last_checkpoint)["extra"]["resume"]
    assert set(last["aux_head"]) == {"0.weight", "0.bias", "2.weight", "2.bias"}
    # the extra loss changes training
    assert [h["train_loss"] for h in plain.history] != [h["train_loss"] for h in run.history]

    out = tmp_path / "aux-resumed"
    train_classifier(data_root, out, on_epoch_end=lambda rec: rec["epoch"] == 1, aux_masks=0.5, **CLS)
    done = train_classifier(data_root, out, resume=True, aux_masks=0.5, **CLS)
    x = read_checkpoint(run.last_checkpoint)["state_dict"]
    y = read_checkpoint(out / "last.pt")["state_dict"]
    assert all(torch.equal(x[k], y[k]) for k in x)
    assert [h["train_loss"] for h in run.history] == [h["train_loss"] for h in done.history]


@pytest.mark.parametrize("bad", [-0.1, float("nan"), 11.0])
def test_bad_aux_weight_is_refused_before_any_work(data_root, tmp_path, bad):
    with pytest.raises(BadInputError, match="aux-masks"):
        train_classifier(data_root, tmp_path / "x", aux_masks=bad, **CLS)
    assert not (tmp_path / "x").exists()


def test_init_from_last_pt_brings_the_mask_head(data_root, tmp_path):
    run = train_classifier(data_root, tmp_path / "aux", aux_masks=0.5, **{**CLS, "epochs": 1})
    head = read_checkpoint(run.last_checkpoint)["extra"]["resume"]["aux_head"]
    kept = {}

    def stop(rec):
        kept.update(read_checkpoint(tmp_path / "ft" / "last.pt")["extra"]["resume"]["aux_head"])
        return True
    train_classifier(data_root, tmp_path / "ft", aux_masks=0.5, init_from=str(run.last_checkpoint),
                     on_epoch_end=stop, **{**CLS, "lr": 1e-9})
    fresh = {}

    def stop_fresh(rec):
        fresh.update(read_checkpoint(tmp_path / "fresh" / "last.pt")["extra"]["resume"]["aux_head"])
        return True
    train_classifier(data_root, tmp_path / "fresh", aux_masks=0.5, on_epoch_end=stop_fresh,
                     **{**CLS, "lr": 1e-9, "seed": 5})
    assert all(torch.allclose(head[k], kept[k], atol=1e-6) for k in head)
    assert not all(torch.allclose(head[k], fresh[k], atol=1e-6) for k in head)
