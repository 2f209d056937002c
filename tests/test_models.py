"""Tests for diffdass.models: segmenters, pretrained loading, DDPM UNets and EMA."""

from __future__ import annotations

import urllib.error
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from diffdass.models import (
    ARCHS,
    EMA,
    UNET_PARAM_COUNTS,
    UNET_PRESETS,
    build_segmenter,
    build_unet,
    unet_param_count,
)
from diffdass.models.deeplabv2 import DeepLabV2
from diffdass.utils.io import save_tensors

torch.set_num_threads(min(2, torch.get_num_threads()))

NUM_CLASSES = 7
STRIDES = {
    "deeplabv2_r101": 8,
    "deeplabv2_tiny": 8,
    "fcn8s_vgg16": 1,
    "fcn8s_tiny": 1,
    "segformer_b5": 4,
    "segformer_tiny": 4,
    "unet_small": 1,
}
BIG = ("deeplabv2_r101", "fcn8s_vgg16", "segformer_b5")
TINY = ("deeplabv2_tiny", "fcn8s_tiny", "segformer_tiny")


@pytest.fixture(scope="module")
def models() -> dict[str, nn.Module]:
    """Every architecture, randomly initialised once (the big ones take a few seconds)."""
    torch.manual_seed(0)
    return {arch: build_segmenter(arch, NUM_CLASSES).eval() for arch in ARCHS}


IMAGENET_MEAN_T = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
IMAGENET_STD_T = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


def _manual_normalise(x: torch.Tensor) -> torch.Tensor:
    return ((x + 1) / 2 - IMAGENET_MEAN_T) / IMAGENET_STD_T


def _images(b: int = 1, h: int = 64, w: int = 128) -> torch.Tensor:
    return torch.rand(b, 3, h, w) * 2 - 1


# ------------------------------------------------------------------ segmenters
def test_archs_listed() -> None:
    assert set(ARCHS) == set(STRIDES)


@pytest.mark.parametrize("arch", ARCHS)
def test_output_shape_and_stride(models, arch: str) -> None:
    model = models[arch]
    stride = STRIDES[arch]
    # the big models run on 32x64 to stay fast on 2 CPU cores
    b, h, w = (1, 32, 64) if arch in BIG else (2, 64, 128)
    x = _images(b, h, w)
    with torch.no_grad():
        y = model(x)
        up = model.predict(x, (64, 128))
    assert model.arch == arch
    assert model.num_classes == NUM_CLASSES
    assert model.output_stride == stride
    assert y.shape == (b, NUM_CLASSES, h // stride, w // stride)
    assert up.shape == (b, NUM_CLASSES, 64, 128)
    assert torch.isfinite(y).all()


def test_predict_is_bilinear_upsampling(models) -> None:
    model = models["deeplabv2_tiny"]
    x = _images(2)
    with torch.no_grad():
        logits = model(x)
        expected = F.interpolate(logits, size=(40, 90), mode="bilinear", align_corners=False)
        got = model.predict(x, (40, 90))
        default = model.predict(x)
    torch.testing.assert_close(got, expected)
    assert default.shape[-2:] == x.shape[-2:]


@pytest.mark.parametrize("arch", TINY)
def test_arbitrary_input_size(models, arch: str) -> None:
    x = _images(1, 50, 77)
    with torch.no_grad():
        y = models[arch](x)
    if arch == "fcn8s_tiny":  # stride 1: exactly the input size
        assert y.shape == (1, NUM_CLASSES, 50, 77)
    else:
        s = STRIDES[arch]
        assert abs(y.shape[-2] - 50 / s) <= 1 and abs(y.shape[-1] - 77 / s) <= 1


def test_segmenter_is_differentiable_wrt_input(models) -> None:
    model = models["segformer_tiny"]
    x = _images(1).requires_grad_(True)
    model.predict(x).logsumexp(dim=1).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_aspp_v2_is_sum_of_four_dilated_branches(models) -> None:
    model: DeepLabV2 = models["deeplabv2_tiny"]
    branches = list(model.head.branches)
    assert [c.dilation for c in branches] == [(d, d) for d in (6, 12, 18, 24)]
    assert [c.padding for c in branches] == [(d, d) for d in (6, 12, 18, 24)]
    assert all(c.kernel_size == (3, 3) for c in branches)
    x = _images(2)
    with torch.no_grad():
        feats = model.features(model.normalize(x))
        out = model(x)
        parts = [conv(feats) for conv in branches]
    torch.testing.assert_close(out, sum(parts))
    # no single branch (nor a partial sum) reproduces the output
    assert not torch.allclose(out, parts[0] + parts[1], atol=1e-6)
    big = models["deeplabv2_r101"].head.branches
    assert len(big) == 4 and all(c.in_channels == 2048 for c in big)
    assert all(c.out_channels == NUM_CLASSES for c in big)


def test_aspp_v2_init(models) -> None:
    model = models["deeplabv2_r101"]
    w = torch.cat([c.weight.flatten() for c in model.head.branches])
    assert abs(w.std().item() - 0.01) < 5e-4
    assert all((c.bias == 0).all() for c in model.head.branches)


def test_input_normalisation(models) -> None:
    model = models["deeplabv2_tiny"]
    mean, std = IMAGENET_MEAN_T, IMAGENET_STD_T
    x = _images(2, 16, 16)
    x[0, :, 0, 0] = -1.0  # black
    x[0, :, 0, 1] = 1.0  # white
    expected = _manual_normalise(x)
    got = model.normalize(x)
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(got[0, :, 0, 0], (-mean / std).flatten())
    torch.testing.assert_close(got[0, :, 0, 1], ((1 - mean) / std).flatten())
    # forward() really goes through the normalisation
    x = _images(1)
    with torch.no_grad():
        torch.testing.assert_close(model(x), model.forward_normalized(_manual_normalise(x)))
    # the constants are not checkpointed
    assert not any("pixel_" in k for k in model.state_dict())


@pytest.mark.parametrize("arch", ARCHS)
def test_param_groups_cover_every_parameter_once(models, arch: str) -> None:
    model = models[arch]
    groups = model.param_groups(lr=2.5e-4)
    assert [g["name"] for g in groups] == ["backbone", "head"]
    backbone, head = groups
    assert backbone["lr"] == pytest.approx(2.5e-4) and backbone["lr_mult"] == 1.0
    assert head["lr"] == pytest.approx(2.5e-3) and head["lr_mult"] == 10.0
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids)), "a parameter appears in two groups"
    assert set(ids) == {id(p) for p in model.parameters()}
    assert {id(p) for p in head["params"]} == {id(p) for p in model.head.parameters()}
    assert len(head["params"]) > 0 and len(backbone["params"]) > 0
    torch.optim.SGD(groups, lr=2.5e-4, momentum=0.9)  # accepted as-is


# ----------------------------------------------------------- pretrained weights
def _raise_url_error(*args, **kwargs):
    raise urllib.error.URLError("[Errno -2] Name or service not known")


def _raise_os_error(*args, **kwargs):
    raise OSError("We couldn't connect to 'https://huggingface.co'")


@pytest.mark.parametrize("arch", ["deeplabv2_r101", "fcn8s_vgg16"])
def test_pretrained_true_without_internet_raises(monkeypatch, arch: str) -> None:
    import torchvision.models._api as tv_api

    monkeypatch.setattr(tv_api, "load_state_dict_from_url", _raise_url_error)
    with pytest.raises(RuntimeError, match="local file") as info:
        build_segmenter(arch, 19, pretrained=True)
    assert "internet" in str(info.value)
    assert isinstance(info.value.__cause__, urllib.error.URLError)


def test_pretrained_true_without_internet_raises_smp(monkeypatch) -> None:
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", _raise_os_error)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", _raise_url_error)
    with pytest.raises(RuntimeError, match="local file"):
        build_segmenter("segformer_b5", 19, pretrained=True)


def test_pretrained_true_loads_library_weights(monkeypatch, models) -> None:
    """The success path, with the download replaced by a torchvision-layout state dict."""
    import torchvision.models._api as tv_api

    ref = models["deeplabv2_r101"]
    state = dict(ref.backbone.state_dict())
    state["fc.weight"], state["fc.bias"] = torch.zeros(1000, 2048), torch.zeros(1000)
    urls = []

    def fake_download(url, *args, **kwargs):
        urls.append(url)
        return state

    monkeypatch.setattr(tv_api, "load_state_dict_from_url", fake_download)
    model = build_segmenter("deeplabv2_r101", NUM_CLASSES, pretrained=True)
    assert urls and "resnet101" in urls[0]
    _assert_same(ref.backbone.state_dict(), model.backbone.state_dict())
    assert model.pretrained_report.missing == []
    assert sorted(model.pretrained_report.unexpected) == ["fc.bias", "fc.weight"]


def test_smp_imagenet_weights_come_from_the_hub(monkeypatch, models, tmp_path: Path) -> None:
    import huggingface_hub

    from diffdass.models.factory import _smp_imagenet_state_dict

    ref = models["segformer_tiny"]
    path = tmp_path / "model.safetensors"
    save_tensors(path, ref.backbone.state_dict())
    calls = []

    def fake_hub(repo_id, filename, revision=None, **kwargs):
        calls.append((repo_id, filename))
        return str(path)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_hub)
    state = _smp_imagenet_state_dict("segformer_tiny", "mit_b0")
    assert calls == [("smp-hub/mit_b0.imagenet", "model.safetensors")]
    fresh = build_segmenter("segformer_tiny", NUM_CLASSES)
    report = fresh.load_pretrained_state_dict(state, source="hub")
    assert report.missing == [] and report.unexpected == []
    _assert_same(ref.backbone.state_dict(), fresh.backbone.state_dict())


@pytest.mark.parametrize("arch", TINY)
def test_tiny_has_no_imagenet_weights(arch: str) -> None:
    with pytest.raises(ValueError, match="no ImageNet weights"):
        build_segmenter(arch, 19, pretrained=True)


def _assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.mark.parametrize(
    ("arch", "suffix"),
    [("deeplabv2_tiny", ".pth"), ("segformer_tiny", ".safetensors"), ("fcn8s_tiny", ".pth")],
)
def test_pretrained_local_backbone_file(tmp_path: Path, arch: str, suffix: str) -> None:
    torch.manual_seed(1)
    src = build_segmenter(arch, NUM_CLASSES)
    with torch.no_grad():  # make BN buffers non-default too
        for buf in src.backbone.buffers():
            if buf.is_floating_point():
                buf.uniform_(0.5, 1.5)
    state = src.backbone.state_dict()
    path = tmp_path / f"backbone{suffix}"
    if suffix == ".safetensors":
        save_tensors(path, state)
    else:
        torch.save(state, path)
    torch.manual_seed(2)
    dst = build_segmenter(arch, NUM_CLASSES, pretrained=str(path))
    _assert_same(src.backbone.state_dict(), dst.backbone.state_dict())
    assert dst.pretrained_report.missing == []
    assert len(dst.pretrained_report.loaded) == len(state)
    # the head is not in the file: it stays freshly initialised
    assert any(
        not torch.equal(p, q)
        for p, q in zip(src.head.parameters(), dst.head.parameters(), strict=True)
    )


def test_pretrained_torchvision_vgg_classifier_is_reshaped(tmp_path: Path) -> None:
    torch.manual_seed(3)
    src = build_segmenter("fcn8s_tiny", NUM_CLASSES)
    b = src.backbone
    state = {f"features.{k}": v for k, v in b.features.state_dict().items()}
    state["classifier.0.weight"] = b.fc6.weight.detach().reshape(b.fc6.out_channels, -1)
    state["classifier.0.bias"] = b.fc6.bias.detach()
    state["classifier.3.weight"] = b.fc7.weight.detach().reshape(b.fc7.out_channels, -1)
    state["classifier.3.bias"] = b.fc7.bias.detach()
    state["classifier.6.weight"] = torch.randn(1000, b.fc7.out_channels)  # ImageNet logits
    path = tmp_path / "vgg.pth"
    torch.save(state, path)
    dst = build_segmenter("fcn8s_tiny", NUM_CLASSES, pretrained=path)
    _assert_same(src.backbone.state_dict(), dst.backbone.state_dict())
    assert dst.pretrained_report.unexpected == ["classifier.6.weight"]


def test_pretrained_full_model_checkpoint(tmp_path: Path) -> None:
    torch.manual_seed(4)
    src = build_segmenter("deeplabv2_tiny", NUM_CLASSES)
    wrapped = {"state_dict": {f"module.{k}": v for k, v in src.state_dict().items()}}
    path = tmp_path / "full.pth"
    torch.save(wrapped, path)
    dst = build_segmenter("deeplabv2_tiny", NUM_CLASSES, pretrained=path)
    _assert_same(src.state_dict(), dst.state_dict())
    # a different number of classes: backbone loads, the classifier is reported as mismatched
    other = build_segmenter("deeplabv2_tiny", 3, pretrained=path)
    _assert_same(src.backbone.state_dict(), other.backbone.state_dict())
    assert len(other.pretrained_report.mismatched) == 8  # 4 branches x (weight, bias)


def test_pretrained_file_without_matching_keys_raises(tmp_path: Path) -> None:
    path = tmp_path / "unrelated.pth"
    torch.save({"foo.weight": torch.randn(3, 3), "bar.bias": torch.randn(3)}, path)
    with pytest.raises(ValueError, match="none of its"):
        build_segmenter("deeplabv2_tiny", NUM_CLASSES, pretrained=path)
    # right names, wrong shapes: nothing loadable either
    path2 = tmp_path / "wrong_shapes.safetensors"
    save_tensors(path2, {"conv1.weight": torch.randn(8, 3, 3, 3)})
    with pytest.raises(ValueError, match="none of its"):
        build_segmenter("deeplabv2_tiny", NUM_CLASSES, pretrained=path2)
    with pytest.raises(FileNotFoundError):
        build_segmenter("deeplabv2_tiny", NUM_CLASSES, pretrained=tmp_path / "missing.pth")


def test_unknown_arch_raises() -> None:
    with pytest.raises(ValueError, match="unknown segmenter arch") as info:
        build_segmenter("deeplabv3_r50", 19)
    for arch in ARCHS:
        assert arch in str(info.value)


# ------------------------------------------------------------------------ UNets
@pytest.mark.parametrize("hw", [(32, 64), (64, 128)])
def test_unet_tiny_output_shape(hw: tuple[int, int]) -> None:
    torch.manual_seed(0)
    unet = build_unet("tiny", sample_size=hw)
    x = torch.randn(2, 3, *hw)
    with torch.no_grad():
        eps = unet(x, torch.tensor([3, 700])).sample
    assert eps.shape == x.shape
    assert torch.isfinite(eps).all()
    assert tuple(unet.config.sample_size) == hw


def test_unet_preset_param_counts() -> None:
    assert set(UNET_PRESETS) == {"tiny", "small", "ddpm256"}
    assert unet_param_count(build_unet("tiny", (32, 64))) == UNET_PARAM_COUNTS["tiny"]
    small = unet_param_count(build_unet("small", (64, 128)))
    assert small == UNET_PARAM_COUNTS["small"] and 2e6 <= small <= 6e6
    with torch.device("meta"):  # 114M parameters: count them without allocating
        big = build_unet("ddpm256", (256, 256))
    assert unet_param_count(big) == UNET_PARAM_COUNTS["ddpm256"]
    assert 110e6 < unet_param_count(big) < 118e6
    # attention at the 16x16 level of a 256x256 input (4 downsamplings)
    assert big.config.down_block_types.index("AttnDownBlock2D") == 4


def test_unet_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="divisible"):
        build_unet("small", (60, 128))
    with pytest.raises(ValueError, match="unknown UNet preset"):
        build_unet("huge", (64, 64))


# -------------------------------------------------------------------------- EMA
def test_ema_hand_computed() -> None:
    model = nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(0.0)
    ema = EMA(model, decay=0.9)
    for w in (1.0, 2.0):
        with torch.no_grad():
            model.weight.fill_(w)
        assert ema.update(model) == pytest.approx(0.9)
    # 0.9 * (0.9 * 0 + 0.1 * 1) + 0.1 * 2 = 0.29
    assert ema.shadow["weight"].item() == pytest.approx(0.29)
    assert model.weight.item() == 2.0  # update does not touch the model
    ema.copy_to(model)
    assert model.weight.item() == pytest.approx(0.29)


def test_ema_warmup_and_buffers() -> None:
    model = nn.Sequential(nn.Linear(1, 1, bias=False), nn.BatchNorm1d(1))
    with torch.no_grad():
        model[0].weight.fill_(0.0)
    ema = EMA(model, decay=0.9999, warmup=True)
    assert ema.current_decay() == pytest.approx(0.1)  # (1 + 0) / (10 + 0)
    with torch.no_grad():
        model[0].weight.fill_(1.0)
        model[1].running_mean.fill_(5.0)
    ema.update(model)  # 0.1 * 0 + 0.9 * 1 = 0.9
    assert ema.shadow["0.weight"].item() == pytest.approx(0.9)
    assert ema.buffers["1.running_mean"].item() == 5.0  # copied, not averaged
    assert ema.current_decay() == pytest.approx(2 / 11)
    with torch.no_grad():
        model[0].weight.fill_(2.0)
    ema.update(model)  # 2/11 * 0.9 + 9/11 * 2 = 1.8
    assert ema.shadow["0.weight"].item() == pytest.approx(1.8)
    late = EMA(model, decay=0.99, warmup=True)
    late.step = 10_000
    assert late.current_decay() == pytest.approx(0.99)  # capped at decay

    restored = EMA(model, decay=0.5)
    restored.load_state_dict(ema.state_dict())
    assert restored.step == 2 and restored.decay == 0.9999 and restored.warmup
    assert restored.shadow["0.weight"].item() == pytest.approx(1.8)
    with pytest.raises(KeyError):
        EMA(nn.Linear(1, 1)).update(model)


def test_public_api_resolves() -> None:
    import diffdass.models as models_pkg

    assert sorted(models_pkg.__all__) == sorted(models_pkg._EXPORTS)
    for name in models_pkg.__all__:
        assert getattr(models_pkg, name) is not None
    with pytest.raises(AttributeError):
        _ = models_pkg.not_a_model


def test_ema_checkpoint_layout_and_module_copy(models) -> None:
    model = models["deeplabv2_tiny"]  # has BN buffers and non-persistent pixel_mean/std
    ema = EMA(model, decay=0.5)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    ema.update(model)
    try:
        sd = ema.shadow_state_dict()
        assert list(sd) == list(model.state_dict())  # same layout, strict-loadable
        fresh = build_segmenter("deeplabv2_tiny", NUM_CLASSES)
        fresh.load_state_dict(sd, strict=True)
        w = "head.branches.0.weight"
        torch.testing.assert_close(fresh.state_dict()[w], before[w] + 0.5)
        teacher = ema.module_copy(model)
        torch.testing.assert_close(teacher.state_dict()[w], before[w] + 0.5)
        torch.testing.assert_close(model.state_dict()[w], before[w] + 1.0)  # untouched
        # resume from the module layout, as read back from a checkpoint
        other = EMA(model, decay=0.5)
        other.load_state_dict({"shadow": sd, "step": 7})
        assert other.step == 7
        torch.testing.assert_close(other.shadow[w], ema.shadow[w])
        with pytest.raises(KeyError):
            other.load_state_dict({"shadow": {"nope": torch.zeros(1)}, "step": 0})
    finally:  # the fixture model is shared: restore it
        model.load_state_dict(before)


# ------------------------------------------------------------------ unet_small
@pytest.mark.parametrize("hw", [(64, 128), (40, 56), (50, 77), (9, 13)])
def test_unet_small_full_resolution_logits(models, hw: tuple[int, int]) -> None:
    model = models["unet_small"]
    x = _images(2, *hw)
    with torch.no_grad():
        y = model(x)
    assert y.shape == (2, NUM_CLASSES, *hw)
    assert torch.isfinite(y).all()
    assert model.output_stride == 1 and model.predict(x).shape == y.shape


def test_unet_small_pads_by_replication_and_crops(models) -> None:
    """A 45x61 input is replicate-padded to 48x64 (bottom/right) and the logits cropped back."""
    model = models["unet_small"]
    x = _images(1, 45, 61)
    with torch.no_grad():
        got = model(x)
        padded = model(F.pad(x, (0, 3, 0, 3), mode="replicate"))
    assert got.shape[-2:] == (45, 61) and padded.shape[-2:] == (48, 64)
    torch.testing.assert_close(got, padded[..., :45, :61])


def test_unet_small_is_differentiable_wrt_input_in_eval_mode(models) -> None:
    model = models["unet_small"]
    assert not model.training
    x = _images(1, 40, 56).requires_grad_(True)
    model.predict(x).logsumexp(dim=1).sum().backward()
    assert x.grad is not None and x.grad.shape == x.shape
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    # the gradient is local: a pixel's logits depend on its neighbourhood only
    x2 = _images(1, 64, 64).requires_grad_(True)
    model(x2)[0, :, 5, 5].sum().backward()
    assert x2.grad[..., 5, 5].abs().sum() > 0 and x2.grad[..., 60:, 60:].abs().sum() == 0


def test_unet_small_size_and_layout() -> None:
    model = build_segmenter("unet_small", 19)
    n = sum(p.numel() for p in model.parameters())
    assert 300_000 <= n <= 600_000, n
    assert model.arch == "unet_small" and model.num_classes == 19
    bn = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(bn) == 14  # 4 encoder + 3 decoder blocks of two conv-BN-ReLU layers
    # a batch of one trains too (BatchNorm sees 4x8 positions at the bottleneck)
    model.train()
    model(_images(1, 32, 64)).mean().backward()


def test_unet_small_has_no_imagenet_weights_but_loads_local_files(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unet_small has no ImageNet weights.*random init"):
        build_segmenter("unet_small", 19, pretrained=True)
    torch.manual_seed(5)
    src = build_segmenter("unet_small", NUM_CLASSES)
    with torch.no_grad():
        for buf in src.buffers():
            if buf.is_floating_point():
                buf.uniform_(0.5, 1.5)
    torch.save(src.state_dict(), tmp_path / "full.pth")
    save_tensors(tmp_path / "encoder.safetensors", src.backbone.state_dict())
    full = build_segmenter("unet_small", NUM_CLASSES, pretrained=tmp_path / "full.pth")
    _assert_same(src.state_dict(), full.state_dict())
    enc = build_segmenter("unet_small", NUM_CLASSES, pretrained=tmp_path / "encoder.safetensors")
    _assert_same(src.backbone.state_dict(), enc.backbone.state_dict())
    assert enc.pretrained_report.missing == []
    # another class count: everything but the classifier loads
    other = build_segmenter("unet_small", 3, pretrained=tmp_path / "full.pth")
    assert sorted(other.pretrained_report.mismatched)[0].startswith("head.classifier.bias")
    assert len(other.pretrained_report.mismatched) == 2


def test_models_command_lists_unet_small() -> None:
    from typer.testing import CliRunner

    from diffdass.cli.main import app

    res = CliRunner().invoke(app, ["models"])
    assert res.exit_code == 0, res.output
    line = next(ln for ln in res.output.splitlines() if "unet_small" in ln)
    assert "random init" in line


def test_unet_family_by_name(tmp_path):
    """unet_w<W>_d<D>[_nearest]: the named hyper-parameters, full-resolution logits, and a
    checkpoint that rebuilds from its metadata alone."""
    from diffdass.models.factory import load_segmenter
    from diffdass.utils.checkpoint import save_checkpoint

    small = build_segmenter("unet_small", 5)
    same = build_segmenter("unet_w16_d3", 5)
    n = sum(p.numel() for p in small.parameters())
    assert sum(p.numel() for p in same.parameters()) == n
    wide = build_segmenter("unet_w32_d2_nearest", 5).eval()
    assert wide.backbone.widths == [32, 64, 128] and wide.depth == 2
    assert isinstance(wide.head.ups[0][0], torch.nn.Upsample)
    x = torch.rand(2, 3, 20, 30) * 2 - 1
    assert wide(x).shape == (2, 5, 20, 30)
    ckpt = tmp_path / "w.safetensors"
    save_checkpoint(ckpt, {"model": wide}, None, {"arch": wide.arch, "num_classes": 5})
    back, _ = load_segmenter(ckpt)
    with torch.no_grad():
        torch.testing.assert_close(back(x), wide(x))
    for bad in ("unet_w0_d2", "unet_wx_d2", "unet_w16_d3_bilinear"):
        with pytest.raises(ValueError):
            build_segmenter(bad, 5)
