"""One training step of every registered variant, at its own input size and with the training
loop's layout and precision plan, each in a subprocess: a crash in a compute kernel (a
segmentation fault in oneDNN's backward, as seen on AVX-512 CPUs) fails this test instead of a
user's training run."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytest.importorskip("torch")

from covidedge.models.registry import list_variants  # noqa: E402

STEP = r"""
import sys, torch
from covidedge.models.registry import create_model, get_variant
from covidedge.train.amp import plan_for_model, resolve_amp, to_layout
from covidedge.train.augment import BatchAugment, augment_preset
from covidedge.train.bn import recompute_batchnorm

v = get_variant(sys.argv[1])
torch.manual_seed(0)
model = create_model(v.model, **dict(v.model_kwargs))
amp = plan_for_model(resolve_amp("auto", "cpu"), model)
if amp.channels_last:
    model = model.to(memory_format=torch.channels_last)
opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
s = v.input_size
x = torch.rand(2, 1, s, s)
masks = (torch.rand(2, 2, s, s) > 0.5).float()
x, m = BatchAugment(augment_preset("robust"))(x, masks, generator=torch.Generator().manual_seed(0))
model.train()
with amp.autocast():
    out = model(to_layout(x, amp))
if v.task == "classifier":
    loss = torch.nn.functional.cross_entropy(out.float(), torch.tensor([0, 2]))
else:
    loss = torch.nn.functional.binary_cross_entropy_with_logits(out.float(), m)
opt.zero_grad()
loss.backward()
opt.step()
data = [(torch.rand(1, s, s),) for _ in range(4)]
used = recompute_batchnorm(model, data, 4, 2, "cpu", layout=lambda t: to_layout(t, amp))
assert used == 4, used
assert torch.isfinite(loss).item()
print(sys.argv[1], amp.dtype, "channels_last" if amp.channels_last else "nchw", float(loss))
"""


@pytest.mark.parametrize("variant", list_variants())
def test_one_training_step_does_not_crash(variant):
    r = subprocess.run([sys.executable, "-c", STEP, variant], capture_output=True, text=True,
                       timeout=300)
    if r.returncode < 0:
        pytest.fail(f"{variant}: the training step was killed by signal {-r.returncode} "
                    f"(a crash in a compute kernel)\n{r.stderr[-2000:]}")
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.startswith(variant)


def test_narrow_models_train_in_nchw_on_a_cpu():
    from covidedge.models.registry import create_model, get_variant
    from covidedge.train.amp import AmpPlan, narrow_convolutions, plan_for_model

    cpu = AmpPlan(mode="off", dtype="fp32", device_type="cpu", channels_last=True, grad_scaler=False)
    narrow = get_variant("resunet128-small")  # base width 8
    wide = get_variant("resunet128-b16")
    m_narrow = create_model(narrow.model, **dict(narrow.model_kwargs))
    m_wide = create_model(wide.model, **dict(wide.model_kwargs))
    assert narrow_convolutions(m_narrow) > 0 and narrow_convolutions(m_wide) == 0
    assert plan_for_model(cpu, m_narrow).channels_last is False
    assert plan_for_model(cpu, m_wide).channels_last is True
