"""The export wrapper: a network whose forward returns ``(logits, probabilities)``.

This is the module that gets exported to ONNX, with outputs named "logits" and "probabilities",
and the one the torch runner runs, so both read a model's outputs the same way.
"""

from __future__ import annotations

from typing import Tuple

import torch
import torch.nn as nn

from covidedge.errors import IncompatibleModelError
from covidedge.spec import TASKS

__all__ = ["InferenceWrapper"]


class InferenceWrapper(nn.Module):
    """Wrap a model so forward(x) returns ``(logits, probabilities)``: softmax over classes
    (dim 1) for a classifier, of the logits divided by ``temperature`` (the spec's calibration;
    the logits output stays as the network gives it), a sigmoid per mask channel for a
    segmenter."""

    def __init__(self, model: nn.Module, task: str, temperature: float = 1.0):
        super().__init__()
        if task not in TASKS:
            raise IncompatibleModelError(f"unknown task {task!r}; expected one of {TASKS}")
        self.model = model
        self.task = task
        self.temperature = float(temperature)

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        logits = self.model(x)
        if self.task == "classifier":
            scaled = logits if self.temperature == 1.0 else logits / self.temperature
            probabilities = torch.softmax(scaled, dim=1)
        else:
            probabilities = torch.sigmoid(logits)
        return logits, probabilities
