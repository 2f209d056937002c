"""Per-device compute settings: backend flags, channels-last, device-side generators, the
EMA's foreach update and the loaders. On the CPU each must leave every number as it was;
the CUDA branches are exercised by faking the device (no GPU is needed)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from diffdass.adaptation.augment import NoisyMaskedAugment
from diffdass.adaptation.ptl_domain import source_batches
from diffdass.adaptation.translation import batch_generator
from diffdass.data.folder import FolderDataset, StreamDataset
from diffdass.data.transforms import train_transform
from diffdass.diffusion.schedule import DDPMSchedule
from diffdass.evaluation.evaluate import evaluate
from diffdass.models import ema as ema_mod
from diffdass.models.ema import EMA, ema_foreach_
from diffdass.utils import rng as rng_mod
from diffdass.utils.device import channels_last, configure_backends, loader_options, memory_format
from diffdass.utils.rng import derive_seed, seeded_generator

pytestmark = pytest.mark.usefixtures("one_thread")

CPU, CUDA = torch.device("cpu"), torch.device("cuda")  # a device object needs no GPU


# ---------------------------------------------------------------- backends, memory format
def _flags():
    return (
        torch.backends.cudnn.benchmark,
        torch.backends.cuda.matmul.allow_tf32,
        torch.backends.cudnn.allow_tf32,
    )


def _set_flags(values):
    (
        torch.backends.cudnn.benchmark,
        torch.backends.cuda.matmul.allow_tf32,
        torch.backends.cudnn.allow_tf32,
    ) = values


@pytest.fixture
def backend_flags():
    """The three flags at False for the test, restored afterwards (torch's backend modules
    do not work with monkeypatch)."""
    saved = _flags()
    _set_flags((False, False, False))
    yield
    _set_flags(saved)


def test_configure_backends_is_a_no_op_on_the_cpu(backend_flags):
    configure_backends(CPU)
    assert _flags() == (False, False, False)


def test_configure_backends_on_cuda_sets_benchmark_and_tf32(backend_flags):
    configure_backends(CUDA)
    assert _flags() == (True, True, True)


def _conv():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.Conv2d(8, 2, 1))


def test_channels_last_only_on_cuda():
    net = _conv()
    before = {k: (v.clone(), v.stride()) for k, v in net.state_dict().items()}
    params = list(net.parameters())
    assert channels_last(net, CPU) is net
    assert all(v.stride() == before[k][1] for k, v in net.state_dict().items())
    assert memory_format(CPU) == torch.preserve_format
    x = torch.randn(2, 3, 5, 7)
    assert x.to(CPU, memory_format=memory_format(CPU)) is x  # no copy, no re-layout
    # the CUDA branch on CPU tensors: strides change, values and parameter objects do not
    assert channels_last(net, CUDA) is net and memory_format(CUDA) == torch.channels_last
    w = net[0].weight
    assert w.is_contiguous(memory_format=torch.channels_last) and not w.is_contiguous()
    assert list(net.parameters()) == params
    assert all(torch.equal(v, before[k][0]) for k, v in net.state_dict().items())


def test_loader_options():
    assert loader_options(CPU, 0) == {
        "num_workers": 0,
        "pin_memory": False,
        "persistent_workers": False,
    }
    assert loader_options(CPU, 3)["pin_memory"] is False
    assert loader_options(CPU, 3)["persistent_workers"] is False
    assert loader_options(CUDA, 0) == {
        "num_workers": 0,
        "pin_memory": True,
        "persistent_workers": False,  # torch refuses persistent workers without workers
    }
    assert loader_options(CUDA, 2) == {
        "num_workers": 2,
        "pin_memory": True,
        "persistent_workers": True,
    }


# ---------------------------------------------------------------- generators
def test_seeded_generator_on_the_cpu_draws_what_a_cpu_generator_draws():
    for dev in (None, "cpu", CPU):
        g = seeded_generator(123, dev)
        assert g.device == CPU
        ref = torch.Generator().manual_seed(123)
        assert torch.equal(torch.randn(50, generator=g), torch.randn(50, generator=ref))


def test_seeded_generator_on_cuda_is_made_on_the_device(monkeypatch):
    made = []

    class FakeGenerator:
        def __init__(self, device="cpu"):
            self.device = torch.device(device)
            made.append(self)

        def manual_seed(self, seed):
            self.seed = seed
            return self

    monkeypatch.setattr(rng_mod.torch, "Generator", FakeGenerator)
    g = seeded_generator(7, "cuda:1")
    assert made == [g] and g.device == torch.device("cuda:1") and g.seed == 7
    b = batch_generator(5, 3, CUDA)
    assert b.device == CUDA and b.seed == derive_seed(5, 4242, 3)  # keyed by (seed, batch) only


def test_batch_generator_on_the_cpu_is_unchanged():
    for dev in (None, CPU):
        g = batch_generator(11, 2, dev)
        ref = torch.Generator().manual_seed(derive_seed(11, 4242, 2))
        assert torch.equal(torch.randn(3, 4, generator=g), torch.randn(3, 4, generator=ref))


def test_noisy_masked_draws_on_the_cpu_are_unchanged():
    """The augmentation, with a CPU generator, equals the draw order it always had."""
    sched = DDPMSchedule()
    aug = NoisyMaskedAugment(sched, prob=0.5, max_timestep=50)
    data = torch.Generator().manual_seed(0)
    x = torch.rand(5, 3, 6, 8, generator=data) * 2 - 1
    y = torch.randint(0, 3, (5, 6, 8), generator=data)
    xa, ya, k = aug(x, y, torch.Generator().manual_seed(1))
    g = torch.Generator().manual_seed(1)
    pick = torch.rand(5, generator=g) < 0.5
    t = torch.randint(0, 50, (5,), generator=g)
    noise = torch.randn(x.shape, generator=g, dtype=torch.float32)
    u = torch.rand(5, generator=g)
    assert k == int(pick.sum()) and 0 < k < 5
    for i in range(5):
        if not pick[i]:
            assert torch.equal(xa[i], x[i]) and torch.equal(ya[i], y[i])
            continue
        present = torch.unique(y[i])
        c = present[min(int(u[i] * present.numel()), present.numel() - 1)]
        m = y[i] == c
        want = sched.q_sample(x[i : i + 1], t[i : i + 1], noise[i : i + 1])[0] * m
        assert torch.equal(xa[i], want)
        assert torch.equal(ya[i], torch.where(m, y[i], torch.full_like(y[i], 255)))


# ---------------------------------------------------------------- EMA
def _old_update(shadows, params, d):
    for s, p in zip(shadows, params, strict=True):
        s.mul_(d).add_(p, alpha=1.0 - d)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_ema_foreach_equals_the_per_parameter_formula_bit_for_bit(dtype):
    g = torch.Generator().manual_seed(0)
    shapes = [(64, 3, 3, 3), (64,), (1000,), (7, 5), (3,), (1,)]
    for d in (0.9999, 0.999, 0.5, 0.123456789, 4 / 13, 0.0, 1.0):
        s = [torch.randn(sh, generator=g, dtype=dtype) for sh in shapes]
        p = [torch.randn(sh, generator=g, dtype=dtype) for sh in shapes]
        old, new = [t.clone() for t in s], [t.clone() for t in s]
        _old_update(old, p, d)
        ema_foreach_(new, p, d)
        assert all(torch.equal(a, b) for a, b in zip(old, new, strict=True)), d


def _bn_net():
    torch.manual_seed(1)
    return nn.Sequential(
        nn.Conv2d(3, 6, 3), nn.BatchNorm2d(6), nn.ReLU(), nn.Conv2d(6, 2, 1), nn.Flatten()
    )


def test_ema_fused_path_equals_the_loop_on_a_model(monkeypatch):
    """The CUDA path (foreach update and copies), forced on CPU tensors, gives the loop's
    bits over several warm-up updates, buffers and copy_to included."""
    model = _bn_net()
    loop, fused = EMA(model, decay=0.999, warmup=True), EMA(model, decay=0.999, warmup=True)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for step in range(4):
        model.train()
        model(
            torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(step))
        ).sum().backward()
        opt.step()
        opt.zero_grad()
        monkeypatch.setattr(ema_mod, "_fused", lambda t: False)
        loop.update(model)
        monkeypatch.setattr(ema_mod, "_fused", lambda t: True)
        fused.update(model)
    for store in ("shadow", "buffers"):
        a, b = getattr(loop, store), getattr(fused, store)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), store
    out_loop, out_fused = _bn_net(), _bn_net()
    monkeypatch.setattr(ema_mod, "_fused", lambda t: False)
    loop.copy_to(out_loop)
    monkeypatch.setattr(ema_mod, "_fused", lambda t: True)
    fused.copy_to(out_fused)
    sa, sb = out_loop.state_dict(), out_fused.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert torch.equal(sb["1.running_mean"], model.state_dict()["1.running_mean"])


def test_ema_on_the_cpu_keeps_the_loop():
    assert not ema_mod._fused(torch.zeros(1))


# ---------------------------------------------------------------- loaders
def _item_equal(a: dict, b: dict) -> bool:
    return (
        a.keys() == b.keys()
        and torch.equal(a["image"], b["image"])
        and torch.equal(a["label"], b["label"])
        and a["stem"] == b["stem"]
        and a["index"] == b["index"]
    )


def test_ptl_source_batches_are_the_same_with_workers(tiny_dataset):
    ds = FolderDataset(tiny_dataset, "train", transform=train_transform((16, 16)), seed=3)
    stream = StreamDataset(ds)
    keys = [4, 1, 9, 0, 13, 5, 2]  # keys past len(ds): later augmentation epochs
    want = [[stream[k] for k in keys[s : s + 3]] for s in range(0, len(keys), 3)]
    for workers in (0, 1):
        got = list(source_batches(stream, keys, 3, workers))
        assert [len(b) for b in got] == [3, 3, 1]
        for gb, wb in zip(got, want, strict=True):
            assert all(_item_equal(a, b) for a, b in zip(gb, wb, strict=True))


def test_evaluate_with_workers_equals_the_main_thread(tiny_dataset, tmp_path):
    from diffdass.models.factory import build_segmenter

    torch.manual_seed(0)
    model = build_segmenter("unet_small", 4)
    ds = FolderDataset(tiny_dataset, "train")
    a = evaluate(model, ds, ["all"], "cpu", pred_dir=tmp_path / "a", progress=False)
    b = evaluate(model, ds, ["all"], "cpu", pred_dir=tmp_path / "b", progress=False, num_workers=1)
    c = evaluate(model, ds, ["all"], "cpu", progress=False, amp=True)  # amp: CUDA only
    for other in (b, c):
        assert other["miou"] == a["miou"] and other["per_class_iou"] == a["per_class_iou"]
        assert other["pixel_accuracy"] == a["pixel_accuracy"]
    names = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "b").iterdir()) and len(names) == 6
    for n in names:
        assert (tmp_path / "a" / n).read_bytes() == (tmp_path / "b" / n).read_bytes()
    with pytest.raises(ValueError, match="num_workers"):
        evaluate(model, ds, ["all"], "cpu", progress=False, num_workers=-1)
