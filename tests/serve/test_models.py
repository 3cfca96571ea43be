"""The Triton python models' steps called directly, with a stand-in for triton_python_backend_utils."""

from __future__ import annotations

import types

import numpy as np

from covidedge.runtime.postprocess import segmentation_masks
from covidedge.serve.models import IMAGE_SIZE, INFECTION_MASK, LUNG_MASK, NETWORK_PROBABILITIES, PostprocessModel
from tests.runtime.test_postprocess import rule_probabilities


def _stand_in_pb(inputs):
    def tensor(name, array):
        return types.SimpleNamespace(name=name, array=array)

    def get_input_tensor_by_name(request, name):
        a = inputs.get(name)
        return None if a is None else types.SimpleNamespace(as_numpy=lambda: a)

    return types.SimpleNamespace(Tensor=tensor, get_input_tensor_by_name=get_input_tensor_by_name)


def test_postprocess_masks_are_the_one_rule():
    lung, inf = rule_probabilities()
    probs = np.stack([lung, inf])[None]
    model = PostprocessModel()
    model.params, model.labels, model.channels, model.threshold = {}, [], ["lungs", "infection"], 0.5
    model.pb = _stand_in_pb({IMAGE_SIZE: np.array([[90, 70]], np.int32),
                             NETWORK_PROBABILITIES["segmenter"]: probs})
    out = {t.name: t.array for t in model._one(request=None)}
    lungs, infection = segmentation_masks(lung, inf, 0.5, (90, 70))
    np.testing.assert_array_equal(out[LUNG_MASK][0], lungs)
    np.testing.assert_array_equal(out[INFECTION_MASK][0], infection)


def test_postprocess_empties_infection_where_the_classifier_rules_covid_out():
    from covidedge.runtime.postprocess import COVID_GATE

    lung, inf = np.zeros((64, 64), np.float32), np.zeros((64, 64), np.float32)
    lung[10:54, 8:28] = lung[10:54, 36:56] = 0.9
    inf[20:40, 10:26] = 0.8  # a quarter of the lungs: above the area gate
    seg = np.stack([np.stack([lung, inf])] * 2)
    cls = np.array([[COVID_GATE / 2, 0.5, 0.5 - COVID_GATE / 2], [0.6, 0.3, 0.1]])
    model = PostprocessModel()
    model.params, model.threshold = {}, 0.5
    model.labels, model.channels = ["COVID-19", "Non-COVID", "Normal"], ["lungs", "infection"]
    model.pb = _stand_in_pb({IMAGE_SIZE: np.array([[90, 70], [90, 70]], np.int32),
                             NETWORK_PROBABILITIES["segmenter"]: seg, NETWORK_PROBABILITIES["classifier"]: cls})
    out = {t.name: t.array for t in model._one(request=None)}
    lungs, infection = segmentation_masks(lung, inf, 0.5, (90, 70))
    assert infection.any()
    np.testing.assert_array_equal(out[LUNG_MASK][0], lungs)
    assert not out[INFECTION_MASK][0].any()  # P(COVID-19) under the gate
    np.testing.assert_array_equal(out[INFECTION_MASK][1], infection)
