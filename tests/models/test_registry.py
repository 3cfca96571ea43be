"""Model registry: names, defaults, specs, option checks and the export wrapper."""

from __future__ import annotations

import pytest
import torch

import covidedge.models as models
from covidedge.errors import EXIT_INCOMPATIBLE, IncompatibleModelError
from covidedge.models import InferenceWrapper, build_from_spec, create_model, list_models
from covidedge.models.registry import model_task
from covidedge.models.resunet import ResUNet
from covidedge.models.xception import Xception
from covidedge.spec import ModelSpec, classifier_spec, segmenter_spec

TINY = {"xception": dict(width_mult=0.125), "resunet": dict(base_width=4, depth=2)}



def test_package_reexports():
    assert set(models.__all__) == {"create_model", "list_models", "build_from_spec",
                                   "InferenceWrapper", "load_checkpoint"}
    assert models.create_model is create_model


def test_list_models():
    assert list_models() == ["resunet", "xception"]
    assert model_task("xception") == "classifier" and model_task("resunet") == "segmenter"


def test_create_model_defaults():
    clf = create_model("xception", **TINY["xception"])
    seg = create_model("resunet", **TINY["resunet"])
    assert isinstance(clf, Xception) and (clf.num_classes, clf.in_chans) == (3, 1)
    assert isinstance(seg, ResUNet) and (seg.num_classes, seg.in_chans) == (2, 1)


def test_create_model_passes_options():
    model = create_model("xception", num_classes=5, in_chans=3, width_mult=0.25, drop_rate=0.2)
    assert (model.num_classes, model.in_chans, model.num_features) == (5, 3, 512)
    assert model.head_drop.p == pytest.approx(0.2)
    seg = create_model("resunet", num_classes=1, base_width=8, depth=3)
    assert (seg.num_classes, seg.base_width, seg.depth) == (1, 8, 3)


def test_unknown_model_lists_known_names():
    with pytest.raises(IncompatibleModelError, match=r"unknown model 'vit'.*resunet, xception") as info:
        create_model("vit")
    assert info.value.exit_code == EXIT_INCOMPATIBLE


def test_unknown_option_is_an_error_not_ignored():
    with pytest.raises(IncompatibleModelError, match=r"'xception' does not accept.*depth.*width_mult"):
        create_model("xception", depth=3)
    with pytest.raises(IncompatibleModelError, match=r"width_mult.*base_width, depth"):
        create_model("resunet", width_mult=0.5)


def test_build_from_spec_uses_labels_channels_and_kwargs():
    model = build_from_spec(classifier_spec(model_kwargs=TINY["xception"]))
    assert (model.num_classes, model.in_chans, model.num_features) == (3, 1, 256)
    spec = ModelSpec(task="segmenter", model_name="resunet", labels=("lungs",), in_chans=3,
                     model_kwargs={"base_width": 4, "depth": 2})
    seg = build_from_spec(spec)
    assert (seg.num_classes, seg.in_chans, seg.base_width, seg.depth) == (1, 3, 4, 2)


def test_build_from_spec_rejects_task_mismatch_and_unknown_model():
    with pytest.raises(IncompatibleModelError, match=r"task 'segmenter'.*'xception' is a classifier"):
        build_from_spec(segmenter_spec(model_name="xception"))
    with pytest.raises(IncompatibleModelError, match=r"unknown model 'unet'"):
        build_from_spec(segmenter_spec(model_name="unet"))


def test_state_dict_round_trip_through_spec():
    spec = segmenter_spec(model_kwargs=TINY["resunet"])
    torch.manual_seed(0)
    trained = build_from_spec(spec).eval()
    torch.manual_seed(1)
    fresh = build_from_spec(spec)
    fresh.load_state_dict(trained.state_dict())
    fresh.eval()
    x = torch.rand(2, 1, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), trained(x))


@pytest.mark.parametrize("batch", [1, 4])
def test_inference_wrapper_classifier(batch):
    torch.manual_seed(0)
    model = create_model("xception", **TINY["xception"]).eval()
    with torch.no_grad():
        # scale the classifier up so the softmax is far from uniform
        model.fc.weight.mul_(100.0)
        wrapper = InferenceWrapper(model, "classifier").eval()
        x = torch.rand(batch, 1, 32, 32)
        logits, probabilities = wrapper(x)
        torch.testing.assert_close(logits, model(x))
    assert probabilities.shape == logits.shape == (batch, 3)
    torch.testing.assert_close(probabilities.sum(dim=1), torch.ones(batch))
    assert ((probabilities >= 0) & (probabilities <= 1)).all()
    torch.testing.assert_close(probabilities, torch.softmax(logits, dim=1))
    assert torch.equal(probabilities.argmax(1), logits.argmax(1))


@pytest.mark.parametrize("batch", [1, 4])
def test_inference_wrapper_segmenter(batch):
    torch.manual_seed(0)
    model = create_model("resunet", **TINY["resunet"]).eval()
    wrapper = InferenceWrapper(model, "segmenter").eval()
    with torch.no_grad():
        logits, probabilities = wrapper(torch.rand(batch, 1, 16, 16))
    assert probabilities.shape == logits.shape == (batch, 2, 16, 16)
    assert ((probabilities >= 0) & (probabilities <= 1)).all()
    torch.testing.assert_close(probabilities, torch.sigmoid(logits))
    # per-channel sigmoid, not a softmax: channels need not sum to 1
    assert not torch.allclose(probabilities.sum(dim=1), torch.ones(batch, 16, 16))


def test_inference_wrapper_rejects_unknown_task():
    with pytest.raises(IncompatibleModelError, match=r"unknown task 'detector'"):
        InferenceWrapper(create_model("resunet", **TINY["resunet"]), "detector")


# -- variants ----------------------------------------------------------------------------------
def test_variants_are_data_the_models_accept():
    from covidedge.models.registry import VARIANTS, get_entry

    assert VARIANTS, "no variants"
    for name, v in VARIANTS.items():
        entry = get_entry(v.model)
        assert v.name == name and v.task == entry.task
        assert set(v.model_kwargs) <= set(entry.options()), name
        assert v.input_size >= 32, name
        if v.model == "resunet":
            assert v.input_size % 2 ** v.model_kwargs["depth"] == 0, name
        assert v.to_dict()["input_size"] == v.input_size


def test_named_sizes():
    from covidedge.models.registry import DEFAULT_VARIANTS, get_variant

    full = get_variant("xception256", "classifier")
    assert (full.model, full.input_size, dict(full.model_kwargs)) == ("xception", 256, {"width_mult": 1.0})
    small = get_variant("xception128-small")
    assert (small.input_size, dict(small.model_kwargs)) == (128, {"width_mult": 0.25})
    seg = get_variant("resunet256-b16", "segmenter")
    assert (seg.input_size, dict(seg.model_kwargs)) == (256, {"base_width": 16, "depth": 4})
    assert dict(get_variant("resunet256").model_kwargs) == {"base_width": 32, "depth": 4}
    assert dict(DEFAULT_VARIANTS) == {"classifier": "xception256", "segmenter": "resunet256"}
    with pytest.raises(TypeError):  # the table is read-only
        full.model_kwargs["width_mult"] = 0.5


def test_list_and_unknown_variants():
    from covidedge.errors import EXIT_BAD_INPUT, BadInputError
    from covidedge.models.registry import get_variant, list_variants

    cls, seg = list_variants("classifier"), list_variants("segmenter")
    assert cls[0] == "xception256" and seg[0] == "resunet256"
    assert sorted(list_variants()) == sorted(cls + seg) and not set(cls) & set(seg)
    with pytest.raises(BadInputError, match=r"unknown model variant 'vit-b'; known: xception256, ") as info:
        get_variant("vit-b")
    assert info.value.exit_code == EXIT_BAD_INPUT
    with pytest.raises(BadInputError, match=r"unknown segmenter variant 'xception256' \('xception256' is a "
                                            r"classifier variant\); known: resunet256"):
        get_variant("xception256", "segmenter")


def test_shipped_models_are_named_variants():
    from covidedge.models.registry import VARIANTS
    from covidedge.pretrained import shipped_models

    found = []
    for m in shipped_models():
        s = m.summary
        kwargs = {k: v for k, v in s["model_kwargs"].items() if k != "drop_rate"}  # training-only
        match = [n for n, v in VARIANTS.items() if v.model == s["architecture"]
                 and [v.input_size] * 2 == list(s["input_size"]) and dict(v.model_kwargs) == kwargs]
        assert match, f"{m.name} ({s['input_size']}, {kwargs}) is no named variant"
        found += match
    assert sorted(found) == ["resunet256-b16", "xception256-small"]


def test_registry_reads_without_torch():
    import subprocess
    import sys

    code = ("import sys; from covidedge.models.registry import list_variants, get_entry; "
            "list_variants(); get_entry('xception').task; assert 'torch' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)
