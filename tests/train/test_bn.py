"""Clean-image BatchNorm statistics, the weight average, and the robust augmentation preset."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from covidedge.errors import BadInputError  # noqa: E402
from covidedge.train.augment import AUGMENT_PRESETS, BatchAugment, augment_preset  # noqa: E402
from covidedge.train.bn import WeightAverage, recompute_batchnorm  # noqa: E402


def _bn_net():
    return torch.nn.Sequential(torch.nn.Conv2d(1, 3, 1, bias=False), torch.nn.BatchNorm2d(3),
                               torch.nn.ReLU(), torch.nn.Conv2d(3, 2, 1), torch.nn.BatchNorm2d(2))


def test_recompute_batchnorm_gives_the_exact_statistics_of_the_images():
    torch.manual_seed(0)
    net = _bn_net()
    images = [(torch.rand(1, 6, 6) * (1 + i % 3),) for i in range(10)]
    # running statistics from other data (augmented batches) before the step
    net.train()
    with torch.no_grad():
        net(torch.rand(8, 1, 6, 6) * 5)
    used = recompute_batchnorm(net, images, count=10, batch_size=5, device="cpu", seed=1)
    assert used == 10
    x = torch.stack([t[0] for t in images])
    feat = net[0](x)
    bn = net[1]
    assert torch.allclose(bn.running_mean, feat.mean(dim=(0, 2, 3)), atol=1e-5)
    # the cumulative average of per-batch unbiased variances (two equal batches)
    order = __import__("numpy").random.default_rng(1).permutation(10)
    var = sum(feat[torch.as_tensor(order[k:k + 5])].var(dim=(0, 2, 3), unbiased=True)
              for k in (0, 5)) / 2
    assert torch.allclose(bn.running_var, var, atol=1e-5)
    assert bn.momentum == 0.1 and net.training  # restored: momentum and the train mode it had


def test_recompute_batchnorm_keeps_the_mode_and_momentum_and_skips_a_lone_image():
    net = _bn_net().eval()
    used = recompute_batchnorm(net, [(torch.rand(1, 4, 4),) for _ in range(5)], count=5,
                               batch_size=2, device="cpu")
    assert used == 4  # the fifth image alone has no batch variance
    assert not net.training and net[1].momentum == 0.1
    assert recompute_batchnorm(net, [(torch.rand(1, 4, 4),)] * 3, count=0, batch_size=2,
                               device="cpu") == 0


def test_weight_average_follows_the_ema_rule():
    net = torch.nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        net.weight.fill_(0.0)
    ema = WeightAverage(net, decay=0.9)
    with torch.no_grad():
        net.weight.fill_(1.0)
    ema.update(net)  # d = min(0.9, 1/10) = 0.1
    assert torch.allclose(ema.module.weight, torch.full((1, 2), 0.9))
    ema.update(net)  # d = 2/11
    assert torch.allclose(ema.module.weight, torch.full((1, 2), 0.9 * (2 / 11) + (1 - 2 / 11)))
    assert ema.state() == {"decay": 0.9, "updates": 2}
    with pytest.raises(ValueError):
        WeightAverage(net, decay=1.0)


def test_the_robust_preset_changes_intensities_within_range_and_reproducibly():
    x = torch.rand(4, 1, 32, 32)
    basic = BatchAugment(augment_preset("basic"))
    robust = BatchAugment(augment_preset("robust"))
    a, _ = robust(x, None, generator=torch.Generator().manual_seed(3))
    b, _ = robust(x, None, generator=torch.Generator().manual_seed(3))
    c, _ = basic(x, None, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    assert not torch.allclose(a, c, atol=1e-3)
    assert float(a.min()) >= 0.0 and float(a.max()) <= 1.0
    # the basic draws are the same whatever the preset (robust draws come after them)
    pb = basic.sample_params(4, generator=torch.Generator().manual_seed(3))
    pr = robust.sample_params(4, generator=torch.Generator().manual_seed(3))
    for k in pb:
        assert torch.equal(pb[k], pr[k]), k
    assert {"gamma", "resample", "noise", "border"} <= set(pr)
    assert set(AUGMENT_PRESETS) == {"basic", "robust"}
    with pytest.raises(BadInputError, match="augmentation 'heavy' is unknown"):
        augment_preset("heavy")


@pytest.mark.parametrize("option, value, words", [
    ("bn_images", -1, "bn-images=-1 is invalid"),
    ("ema_decay", 1.5, "ema-decay=1.5 is invalid"),
    ("augment", "heavy", "augmentation 'heavy' is unknown"),
    ("lr", 1e300, "lr=1e[+]?300 is too large"),
])
def test_training_refuses_bad_statistics_options_before_reading_data(tmp_path, option, value, words):
    from covidedge.train.loop import train_classifier

    with pytest.raises(BadInputError, match=words):
        train_classifier(tmp_path / "no-data", tmp_path / "out", progress=False, **{option: value})


def test_the_command_line_refuses_a_huge_learning_rate_with_exit_3(tmp_path, capsys):
    from covidedge.cli.main import main

    with pytest.raises(SystemExit) as info:
        main(["train", "classifier", "--data", str(tmp_path), "--out", str(tmp_path / "out"),
              "--lr", "1e300"])
    assert info.value.code == 3
    err = capsys.readouterr().err
    assert "is too large" in err and len(err.strip().splitlines()) == 1


def test_the_robust_preset_frames_some_images_in_black_with_bright_marks():
    aug = BatchAugment(augment_preset("robust"), rotation_deg=0.0, shift=0.0, scale=(1.0, 1.0),
                       brightness=0.0, contrast=0.0, gamma=0.0, resample=0.0, noise=0.0, border=1.0)
    x = torch.full((3, 1, 64, 64), 0.5)
    out, _ = aug(x, None, generator=torch.Generator().manual_seed(0))
    assert (out[:, :, 0, :] == 0).all() and (out[:, :, :, -1] == 0).all()  # the frame
    assert all(bool((img == 1.0).any()) for img in out)  # a mark on each
    assert bool((out[:, :, 32, 20:44] == 0.5).any())  # the middle is untouched


def test_batchnorm_shift_reestimates_on_another_uniform_draw_of_train(tmp_path):
    from covidedge.data.synth import make_synthetic_dataset
    from covidedge.train.bn import batchnorm_shift
    from covidedge.train.loop import train_classifier

    data = make_synthetic_dataset(tmp_path / "d", per_class=4, size=64, splits=("Train", "Val"))
    run = train_classifier(data, tmp_path / "run", epochs=1, batch_size=4, image_size=64,
                           width_mult=0.125, progress=False, bn_images=8)
    r = batchnorm_shift(run.best_checkpoint, data, count=9, seed=1, batch_size=4)
    assert r["images"] == 8  # 9 drawn; the last lone image has no batch variance
    assert r["accuracy"] == pytest.approx(run.metrics["metrics"]["accuracy"])
    assert r["delta_points"] == round(100 * (r["accuracy_reestimated"] - r["accuracy"]), 2)
    again = batchnorm_shift(run.best_checkpoint, data, count=9, seed=1, batch_size=4)
    assert again == r  # a seeded draw
