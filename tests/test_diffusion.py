"""Tests of diffdass.diffusion: schedule vs diffusers, Eq. 4, guidance sign/scale, LCG identity,
determinism, SGG arrangements and respacing. Tiny shapes; runs in seconds on CPU."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from diffdass.diffusion import (
    GSG,
    LCG,
    PAPER,
    SGG,
    DDPMSchedule,
    TranslationPipeline,
    as_eps_fn,
    build_guidance,
    diffuse,
    reverse,
    reverse_step,
    translate,
    translation_schedule,
)
from diffdass.diffusion.guidance import DEFAULT_SCALE

B, H, W, NCLS = 2, 16, 32, 5
IGN = 255


# ----------------------------------------------------------------------------- fixtures
def make_labels() -> torch.Tensor:
    y = torch.full((B, H, W), IGN, dtype=torch.long)
    y[0, :8, :16] = 0
    y[0, :8, 16:] = 1
    y[0, 8:, :20] = 2
    y[0, 10:14, 22:30] = 4  # leaves ignore pixels around
    y[1, :, :10] = 3
    y[1, :, 10:24] = 1
    y[1, 4:12, 26:] = 0
    return y


class LinearSeg(nn.Module):
    """Pixel-wise linear segmenter: logits = W x + b (1x1 conv, no nonlinearity)."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(1)
        self.conv = nn.Conv2d(3, NCLS, 1)
        with torch.no_grad():
            self.conv.weight.copy_(torch.randn(NCLS, 3, 1, 1, generator=g))
            self.conv.bias.copy_(torch.randn(NCLS, generator=g) * 0.1)

    def forward(self, x):
        return self.conv(x)


class PixelSeg(nn.Module):
    """Nonlinear but pixel-wise (1x1 convs): LCG and single-pass must agree on it."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(2)
        self.net = nn.Sequential(nn.Conv2d(3, 16, 1), nn.Tanh(), nn.Conv2d(16, NCLS, 1))

    def forward(self, x):
        return self.net(x)


class ConvSeg(nn.Module):
    """3x3 conv + BatchNorm + ReLU + 1x1 head; optional stride 2 (half-resolution logits)."""

    def __init__(self, stride: int = 1) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.conv = nn.Conv2d(3, 16, 3, stride=stride, padding=1)
        self.bn = nn.BatchNorm2d(16)
        self.head = nn.Conv2d(16, NCLS, 1)
        with torch.no_grad():
            self.bn.running_mean.uniform_(-0.2, 0.2)
            self.bn.running_var.uniform_(0.5, 1.5)

    def forward(self, x):
        return self.head(F.softplus(self.bn(self.conv(x))))


def eps_fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Tiny deterministic stand-in for a noise model (depends on x and t)."""
    return 0.3 * torch.tanh(x) + 1e-3 * t.view(-1, 1, 1, 1).float()


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny tensors: intra-op threads only add sync overhead (very costly on a busy machine)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def sched() -> DDPMSchedule:
    return DDPMSchedule()


def rand_x(seed: int = 0) -> torch.Tensor:
    return torch.rand(B, 3, H, W, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def literal_lcg_loss(seg: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """sum over images and classes c of CE(g(x * m_c), y on m_c), torch's mean reduction."""
    total = 0.0
    with torch.no_grad():
        for b in range(x.shape[0]):
            for c in torch.unique(y[b]).tolist():
                if c == IGN:
                    continue
                m = (y[b] == c).float()
                tgt = torch.where(y[b] == c, y[b], torch.full_like(y[b], IGN))
                logits = seg(x[b : b + 1] * m)
                total += F.cross_entropy(logits, tgt[None], ignore_index=IGN).item()
    return total


def global_ce(seg: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return sum(
            F.cross_entropy(seg(x[b : b + 1]), y[b : b + 1], ignore_index=IGN).item()
            for b in range(x.shape[0])
        )


# ----------------------------------------------------------------------------- schedule
def test_schedule_matches_diffusers(sched):
    from diffusers import DDPMScheduler

    ref = DDPMScheduler(
        num_train_timesteps=1000,
        beta_schedule="linear",
        beta_start=1e-4,
        beta_end=0.02,
        variance_type="fixed_large",
        clip_sample=False,
    )
    ts = [0, 1, 500, 999]
    for name in ("betas", "alphas", "alphas_cumprod"):
        mine = getattr(sched, name)[ts].double()
        theirs = getattr(ref, name)[ts].double()
        torch.testing.assert_close(mine, theirs, rtol=2e-5, atol=1e-9, msg=name)
    for t in (1, 500, 999):
        theirs = ref._get_variance(t, variance_type="fixed_small").double()
        torch.testing.assert_close(
            sched.values("posterior_variance")[t], theirs, rtol=1e-4, atol=1e-10
        )
        # diffusers recomputes beta_t as 1 - abar_t / abar_{t-1} in float32 (cancellation)
        assert sched.variance(t) == pytest.approx(ref._get_variance(t).item(), rel=1e-3)
        assert sched.variance(t) == pytest.approx(ref.betas[t].item(), rel=1e-6)
        # posterior mean coefficients from diffusers' own alphas_cumprod
        a, ap = ref.alphas_cumprod[t].double(), ref.alphas_cumprod[t - 1].double()
        bt = 1 - a / ap
        torch.testing.assert_close(
            sched.values("posterior_mean_coef1")[t], bt * ap.sqrt() / (1 - a), rtol=1e-4, atol=0
        )
        torch.testing.assert_close(
            sched.values("posterior_mean_coef2")[t],
            (1 - ap) * (1 - bt).sqrt() / (1 - a),
            rtol=1e-4,
            atol=0,
        )


@pytest.mark.parametrize("t", [0, 1, 500, 999])
def test_reverse_step_matches_diffusers_step(sched, t):
    from diffusers import DDPMScheduler

    ref = DDPMScheduler(
        num_train_timesteps=1000,
        beta_schedule="linear",
        beta_start=1e-4,
        beta_end=0.02,
        variance_type="fixed_large",
        clip_sample=False,
    )
    x = rand_x(1)
    eps = torch.randn(x.shape, generator=torch.Generator().manual_seed(2))
    theirs = ref.step(eps, t, x, generator=torch.Generator().manual_seed(7)).prev_sample
    z = torch.randn(x.shape, generator=torch.Generator().manual_seed(7)) if t > 0 else None
    mine = reverse_step(x, t, lambda xx, tt: eps, sched, noise=z)
    torch.testing.assert_close(mine, theirs, rtol=1e-4, atol=2e-5)
    # the mean alone (Eq. 4) equals the posterior mean with the predicted x0 (DDPM Eq. 7)
    torch.testing.assert_close(
        sched.p_mean(x, t, eps),
        sched.posterior_mean(sched.predict_x0(x, t, eps), x, t),
        rtol=1e-4,
        atol=2e-5,
    )


def test_schedule_hand_values(sched):
    assert sched.values("betas")[0].item() == pytest.approx(1e-4, rel=1e-12)
    assert sched.values("betas")[999].item() == pytest.approx(0.02, rel=1e-12)
    assert sched.values("alphas")[0].item() == pytest.approx(0.9999, rel=1e-12)
    assert sched.values("alphas_cumprod")[0].item() == pytest.approx(0.9999, rel=1e-12)
    beta1 = 1e-4 + (0.02 - 1e-4) / 999
    assert sched.values("alphas_cumprod")[1].item() == pytest.approx(
        0.9999 * (1 - beta1), rel=1e-12
    )
    assert sched.values("alphas_cumprod_prev")[0].item() == 1.0
    assert sched.values("posterior_variance")[0].item() == 0.0
    assert sched.values("posterior_mean_coef1")[0].item() == pytest.approx(1.0, rel=1e-12)
    assert sched.values("posterior_mean_coef2")[0].item() == 0.0
    assert sched.variance(0) == pytest.approx(1e-4, rel=1e-12)
    assert sched.betas.dtype == torch.float32 and len(sched) == 1000
    assert DDPMSchedule(num_timesteps=50).num_timesteps == 50


def test_p_mean_eq4_by_hand(sched):
    x0 = torch.tensor([[[[0.3]]]], dtype=torch.float64)
    eps = torch.tensor([[[[-1.2]]]], dtype=torch.float64)
    # t = 0: x_1 = sqrt(0.9999) x0 + 0.01 eps and Eq. 4 with the true eps gives back x0 exactly
    x1 = sched.q_sample(x0, 0, eps)
    assert x1.item() == pytest.approx(math.sqrt(0.9999) * 0.3 + 0.01 * -1.2, rel=1e-12)
    assert sched.p_mean(x1, 0, eps).item() == pytest.approx(0.3, rel=1e-12)
    # t = 500 by hand
    betas = [1e-4 + i * (0.02 - 1e-4) / 999 for i in range(501)]
    abar = math.prod(1 - b for b in betas)
    xt = math.sqrt(abar) * 0.3 + math.sqrt(1 - abar) * -1.2
    expected = (xt - betas[500] / math.sqrt(1 - abar) * -1.2) / math.sqrt(1 - betas[500])
    got = sched.p_mean(sched.q_sample(x0, 500, eps), 500, eps).item()
    assert got == pytest.approx(expected, rel=1e-10)
    # with the true noise the mean equals the true posterior mean q(x_{t-1} | x_t, x0)
    for t in (1, 10, 500, 999):
        xt_ = sched.q_sample(x0, t, eps)
        assert sched.p_mean(xt_, t, eps).item() == pytest.approx(
            sched.posterior_mean(x0, xt_, t).item(), rel=1e-9
        )
    # per-sample tensor timesteps give the same values as int ones
    xx = torch.randn(2, 1, 2, 2, dtype=torch.float64)
    ee = torch.randn(2, 1, 2, 2, dtype=torch.float64)
    tt = torch.tensor([3, 700])
    both = sched.p_mean(xx, tt, ee)
    torch.testing.assert_close(both[1:], sched.p_mean(xx[1:], 700, ee[1:]))


def test_diffuse_is_eq2_at_n_minus_1(sched):
    x0 = rand_x(3)
    xn = diffuse(x0, 50, sched, torch.Generator().manual_seed(4))
    z = torch.randn(x0.shape, generator=torch.Generator().manual_seed(4))
    abar = sched.values("alphas_cumprod")[49].item()
    torch.testing.assert_close(xn, math.sqrt(abar) * x0 + math.sqrt(1 - abar) * z)
    assert torch.equal(diffuse(x0, 0, sched), x0)


def test_training_loss(sched):
    x0 = rand_x(5)
    lin = nn.Conv2d(3, 3, 1)

    def fn(x, t):
        return lin(x) + 1e-3 * t.view(-1, 1, 1, 1)

    loss = sched.training_loss(fn, x0, torch.Generator().manual_seed(9))
    g = torch.Generator().manual_seed(9)
    t = torch.randint(0, 1000, (B,), generator=g)
    z = torch.randn(x0.shape, generator=g)
    a = sched.alphas_cumprod.double()[t].view(-1, 1, 1, 1)
    xt = (a.sqrt() * x0 + (1 - a).sqrt() * z).float()
    torch.testing.assert_close(loss, F.mse_loss(fn(xt, t), z), rtol=1e-5, atol=1e-6)
    loss.backward()
    assert lin.weight.grad is not None


# ----------------------------------------------------------------------------- GSG
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_gsg_linear_segmenter_exact(sched, reduction):
    seg, y, x = LinearSeg(), make_labels(), rand_x(6)
    lam, t = 80.0, 321
    var = sched.variance(t)
    shift = GSG(seg, y, scale=lam, reduction=reduction)(x, t, 5, var)
    # analytic: dCE/dx_p = W^T (softmax(W x_p + b) - onehot(y_p)) / N_valid(image)
    Wt = seg.conv.weight.detach()[:, :, 0, 0].double()  # (K, 3)
    bias = seg.conv.bias.detach().double()
    z = torch.einsum("kc,bchw->bkhw", Wt, x.double()) + bias.view(1, -1, 1, 1)
    p = z.softmax(1)
    valid = y != IGN
    onehot = F.one_hot(torch.where(valid, y, 0), NCLS).permute(0, 3, 1, 2).double()
    diff = (p - onehot) * valid[:, None]
    grad = torch.einsum("kc,bkhw->bchw", Wt, diff)
    if reduction == "mean":
        grad = grad / valid.sum((1, 2)).view(-1, 1, 1, 1)
    expected = -lam * var * grad
    torch.testing.assert_close(shift.double(), expected, rtol=1e-4, atol=1e-9)
    assert (shift[~valid[:, None].expand_as(shift)] == 0).all()


def test_gsg_matches_torch_default_reduction_with_upsampling(sched):
    """B=1: the loss is torch's default CE on bilinearly upsampled (half-res) logits."""
    seg, y, x = ConvSeg(stride=2).eval(), make_labels()[:1], rand_x(7)[:1]
    xr = x.clone().requires_grad_(True)
    logits = F.interpolate(seg(xr), size=(H, W), mode="bilinear", align_corners=False)
    (ref,) = torch.autograd.grad(F.cross_entropy(logits, y, ignore_index=IGN), xr)
    torch.testing.assert_close(GSG(seg, y, reduction="mean").gradient(x), ref, rtol=1e-5, atol=1e-9)
    # and the batch does not change an image's gradient (per-image mean)
    y2, x2 = make_labels(), rand_x(7)
    got = GSG(seg, y2, reduction="mean").gradient(x2)[:1]
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-9)
    # the default (sum): the same gradient times the image's labelled pixel count
    n_valid = (y != IGN).sum().item()
    torch.testing.assert_close(GSG(seg, y).gradient(x), ref * n_valid, rtol=1e-5, atol=1e-7)


def _lcg_literal_sample(seg, x_t, y, t, sched, scale, z):
    """Eqs. 6-9 literally: one guided sample per class region, combined by the masks;
    ignore pixels take the unguided sample. Same z for every class."""
    var = sched.variance(t)
    with torch.no_grad():
        mu = sched.p_mean(x_t, t, eps_fn(x_t, torch.full((B,), t)))
    out = mu + math.sqrt(var) * z  # unguided sample (kept on ignore pixels)
    for b in range(B):
        union = torch.zeros(H, W)
        acc = torch.zeros(3, H, W)
        for c in torch.unique(y[b]).tolist():
            if c == IGN:
                continue
            m = (y[b] == c).float()
            tgt = torch.where(y[b] == c, y[b], torch.full_like(y[b], IGN))
            xb = x_t[b : b + 1].clone().requires_grad_(True)
            loss = F.cross_entropy(seg(xb * m), tgt[None], ignore_index=IGN)
            (g,) = torch.autograd.grad(loss, xb)
            mu_hat = mu[b] - scale * var * g[0]  # Eq. 7 with the protocol's sign
            x_c = mu_hat + math.sqrt(var) * z[b]  # Eq. 8
            acc += m * x_c  # Eq. 9
            union += m
        out[b] = acc + (1 - union) * out[b]
    return out


# ----------------------------------------------------------------------------- LCG
def test_lcg_class_gradients_confined_and_ignore_unguided(sched):
    seg, y, x = ConvSeg().eval(), make_labels(), rand_x(8)
    lcg = LCG(seg, y, scale=80.0, mode="loop", reduction="mean")
    item_b, item_c, grads = lcg.class_gradients(x)
    assert lcg.num_items == len(item_b) == 4 + 3
    for b, c, g in zip(item_b.tolist(), item_c.tolist(), grads, strict=True):
        inside = (y[b] == c)[None].expand_as(g)
        assert (g[~inside] == 0).all()
        assert g[inside].abs().sum() > 0
    ignore = (y == IGN)[:, None].expand(B, 3, H, W)
    assert ignore.any()
    for mode in ("batched", "loop", "single_pass"):
        shift = LCG(seg, y, scale=80.0, mode=mode, reduction="mean")(
            x, 100, 100, sched.variance(100)
        )
        assert (shift[ignore] == 0).all(), mode
        assert shift[~ignore].abs().sum() > 0, mode


@pytest.mark.parametrize("chunk", [1, 3, 100])
def test_lcg_batched_equals_loop_equals_literal_eq8_9(sched, chunk):
    seg, y, x_t = ConvSeg().eval(), make_labels(), rand_x(9)
    t, scale = 400, 80.0
    z = torch.randn(x_t.shape, generator=torch.Generator().manual_seed(11))
    literal = _lcg_literal_sample(seg, x_t, y, t, sched, scale, z)
    loop = reverse_step(
        x_t, t, eps_fn, sched, noise=z, guidance=LCG(seg, y, scale, mode="loop", reduction="mean")
    )
    batched = reverse_step(
        x_t,
        t,
        eps_fn,
        sched,
        noise=z,
        guidance=LCG(seg, y, scale, chunk_size=chunk, reduction="mean"),
    )
    torch.testing.assert_close(loop, literal, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(batched, loop, rtol=1e-5, atol=1e-6)
    g_loop = LCG(seg, y, scale, mode="loop", reduction="mean").gradient(x_t)
    g_b = LCG(seg, y, scale, chunk_size=chunk, reduction="mean").gradient(x_t)
    torch.testing.assert_close(g_b, g_loop, rtol=1e-4, atol=1e-9)
    assert g_loop.abs().max() > 0
    # the guidance really moved the sample (not a trivially zero shift)
    unguided = reverse_step(x_t, t, eps_fn, sched, noise=z)
    assert (literal - unguided).abs().max() > 1e-4


def test_lcg_single_pass(sched):
    y, x = make_labels(), rand_x(10)
    # identical to LCG for a pixel-wise segmenter (no context to differ by)
    pix = PixelSeg().eval()
    torch.testing.assert_close(
        LCG(pix, y, mode="single_pass").gradient(x),
        LCG(pix, y, mode="batched").gradient(x),
        rtol=1e-4,
        atol=1e-9,
    )
    # but not for a segmenter with a receptive field
    conv = ConvSeg().eval()
    a = LCG(conv, y, mode="single_pass").gradient(x)
    b = LCG(conv, y, mode="batched").gradient(x)
    assert not torch.allclose(a, b, rtol=1e-3, atol=1e-7)


# ----------------------------------------------------------------------------- sign
@pytest.mark.parametrize("kind", ["gsg", "lcg_batched", "lcg_single_pass"])
def test_guided_step_lowers_cross_entropy(sched, kind):
    seg, y, x_t = ConvSeg().eval(), make_labels(), rand_x(12)
    t = 20
    var = sched.variance(t)
    z = torch.randn(x_t.shape, generator=torch.Generator().manual_seed(13))
    # small descent steps: max |shift| is ~0.06 (GSG) / ~0.15 (LCG, smaller regions)
    scale = (100.0 if kind == "gsg" else 20.0) / var

    def make(s):
        if kind == "gsg":
            return GSG(seg, y, scale=s)
        return LCG(seg, y, scale=s, mode=kind.split("_", 1)[1], reduction="mean")

    objective = global_ce if kind == "gsg" else literal_lcg_loss
    base = reverse_step(x_t, t, eps_fn, sched, noise=z)
    guided = reverse_step(x_t, t, eps_fn, sched, noise=z, guidance=make(scale))
    flipped = reverse_step(x_t, t, eps_fn, sched, noise=z, guidance=make(-scale))
    l0, l1, l2 = (objective(seg, v, y) for v in (base, guided, flipped))
    assert l1 < l0 - 1e-3 * l0, (l0, l1)
    assert l2 > l0, (l0, l2)  # the paper's printed "+" sign would raise the loss


def test_guided_translation_lowers_cross_entropy(sched):
    seg, y, x0 = ConvSeg().eval(), make_labels(), rand_x(14)
    kw = dict(n=30, eps_fn=eps_fn, schedule=sched)
    base = translate(x0, generator=torch.Generator().manual_seed(1), **kw)
    guid = build_guidance("sgg", seg, y, scale=2000.0)
    out = translate(x0, guidance=guid, generator=torch.Generator().manual_seed(1), **kw)
    assert global_ce(seg, out, y) < global_ce(seg, base, y)
    assert guid.trace == ["lcg", "gsg"] * 15


# ----------------------------------------------------------------------------- determinism
@pytest.mark.parametrize("respace", [None, 7])
def test_zero_guidance_is_bit_identical(sched, respace):
    seg, y, x0 = ConvSeg().eval(), make_labels(), rand_x(15)

    def run(guidance):
        g = torch.Generator().manual_seed(123)
        out = translate(
            x0, 20, eps_fn, sched, guidance, generator=g, respace_steps=respace, options=PAPER
        )
        return out, g.get_state()

    base, state = run(None)
    assert not torch.equal(base, x0)
    zero = [
        build_guidance("gsg", seg, y, scale=0.0),
        build_guidance("lcg", seg, y, scale=0.0, lcg_mode="batched", chunk_size=2),
        build_guidance("lcg", seg, y, scale=0.0, lcg_mode="loop"),
        build_guidance("lcg", seg, y, scale=0.0, lcg_mode="single_pass"),
        build_guidance("sgg", seg, y, scale=0.0, arrangement="random", seed=3),
    ]
    assert build_guidance("none", seg, y) is None
    for guidance in zero:
        out, st = run(guidance)
        assert torch.equal(out, base), type(guidance).__name__
        assert torch.equal(st, state)  # same number of noise draws
    out, st = run(build_guidance("sgg", seg, y, scale=80.0))
    assert not torch.equal(out, base)
    assert torch.equal(st, state)
    again, _ = run(None)
    assert torch.equal(again, base)


def test_segmenter_state_untouched(sched):
    seg, y, x = ConvSeg(), make_labels(), rand_x(16)
    seg.train()
    seg.head.eval()  # a submodule deliberately frozen by its owner
    rm = seg.bn.running_mean.clone()
    ref = LCG(ConvSeg().eval(), y, mode="loop").gradient(x)
    for mode in ("batched", "loop", "single_pass"):
        torch.testing.assert_close(LCG(seg, y, mode=mode).gradient(x).shape, ref.shape)
    torch.testing.assert_close(LCG(seg, y, mode="batched").gradient(x), ref, rtol=1e-4, atol=1e-7)
    GSG(seg, y).gradient(x)
    assert seg.training and seg.bn.training and not seg.head.training
    assert torch.equal(seg.bn.running_mean, rm)
    assert all(p.grad is None for p in seg.parameters())


# ----------------------------------------------------------------------------- SGG
class _Recorder:
    def __init__(self, name, log):
        self.name, self.log = name, log

    def __call__(self, x_t, t, step, variance):
        self.log.append((self.name, t, step, variance))
        return torch.zeros_like(x_t)


def test_sgg_arrangements(sched):
    L, G = "lcg", "gsg"
    mk = lambda arr, seed=0: SGG(None, None, arrangement=arr, seed=seed)  # noqa: E731
    assert mk("alternate").sequence(6) == [L, G, L, G, L, G]
    assert mk("alternate").sequence(5) == [L, G, L, G, L]
    assert mk("lcg_then_gsg").sequence(6) == [L, L, L, G, G, G]
    assert mk("gsg_then_lcg").sequence(6) == [G, G, G, L, L, L]
    r = mk("random", seed=5).sequence(20)
    assert r.count(L) == 10 and r.count(G) == 10
    assert r == mk("random", seed=5).sequence(20)
    assert any(mk("random", seed=s).sequence(20) != r for s in range(6, 10))
    assert r not in (mk("alternate").sequence(20), mk("lcg_then_gsg").sequence(20))
    with pytest.raises(ValueError):
        SGG(None, None, arrangement="zigzag")

    # dispatch inside the sampler: step numbers n..1, LCG at k = n, n-2, ...
    log: list = []
    sgg = SGG(_Recorder(L, log), _Recorder(G, log), arrangement="alternate")
    x = rand_x(17)
    for _ in range(2):  # reuse restarts the sequence
        log.clear()
        reverse(x, 6, eps_fn, sched, guidance=sgg, generator=torch.Generator().manual_seed(0))
        assert [e[0] for e in log] == [L, G, L, G, L, G]
        assert [e[2] for e in log] == [6, 5, 4, 3, 2, 1]
        assert [e[1] for e in log] == [5, 4, 3, 2, 1, 0]  # 0-based model timesteps
        assert [e[3] for e in log] == [sched.variance(i) for i in range(5, -1, -1)]
        assert sgg.trace == [L, G, L, G, L, G]
    # used directly (no begin): a new descending run restarts
    log.clear()
    for k in (4, 3, 2, 1, 4):
        sgg(x, k - 1, k, 1e-3)
    assert [e[0] for e in log] == [L, G, L, G, L]


def test_build_guidance_kinds():
    seg, y = ConvSeg().eval(), make_labels()
    assert isinstance(build_guidance("gsg", seg, y), GSG)
    lcg = build_guidance("lcg", seg, y, lcg_mode="single_pass", chunk_size=3)
    assert isinstance(lcg, LCG) and lcg.mode == "single_pass" and lcg.chunk_size == 3
    sgg = build_guidance("sgg", seg, y, arrangement="gsg_then_lcg", seed=4)
    assert isinstance(sgg, SGG) and sgg.arrangement == "gsg_then_lcg"
    assert isinstance(sgg.lcg, LCG) and isinstance(sgg.gsg, GSG)
    assert sgg.lcg.scale == sgg.gsg.scale == DEFAULT_SCALE
    assert sgg.lcg.reduction == sgg.gsg.reduction == "sum"
    with pytest.raises(ValueError):
        build_guidance("xyz", seg, y)


# ----------------------------------------------------------------------------- respacing
def test_respace(sched):
    full = sched.respace(1000)
    for name in ("betas", "alphas_cumprod", "posterior_variance", "mean_coef_eps"):
        assert torch.equal(full.values(name), sched.values(name)), name
    assert torch.equal(full.timestep_map, torch.arange(1000))
    r = sched.respace(10)
    kept = r.timestep_map.tolist()
    assert len(r) == 10 and kept[0] == 0 and kept[-1] == 999 and kept == sorted(set(kept))
    torch.testing.assert_close(
        r.values("alphas_cumprod"), sched.values("alphas_cumprod")[kept], rtol=1e-12, atol=0
    )
    assert r.model_timestep(3) == kept[3]
    # respacing an explicit subset and then again composes the maps
    rr = sched.respace([5, 50, 500]).respace([0, 2])
    assert rr.timestep_map.tolist() == [5, 500]
    torch.testing.assert_close(
        rr.values("alphas_cumprod"), sched.values("alphas_cumprod")[[5, 500]], rtol=1e-12, atol=0
    )


def test_respaced_translation(sched):
    s, k = translation_schedule(sched, 100, 10)
    assert k == 10 and s.timestep_map[0] == 0 and s.timestep_map[-1] == 99
    assert s.values("alphas_cumprod")[-1] == sched.values("alphas_cumprod")[99]
    seen: list[int] = []

    def rec(x, t):
        seen.append(int(t[0]))
        return eps_fn(x, t)

    out = translate(
        rand_x(18), 100, rec, sched, generator=torch.Generator(), respace_steps=10, options=PAPER
    )
    assert seen == s.timestep_map.flip(0).tolist() and len(seen) == 10
    assert torch.isfinite(out).all()
    assert translation_schedule(sched, 100, None) == (sched, 100)


# ----------------------------------------------------------------------------- models
def test_tiny_unet_pipeline(sched):
    from diffusers import UNet2DModel

    torch.manual_seed(0)
    unet = UNet2DModel(
        sample_size=(H, W),
        in_channels=3,
        out_channels=3,
        block_out_channels=(8, 16),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
        norm_num_groups=4,
    ).eval()
    pipe = TranslationPipeline(unet, sched)
    seg, y, x0 = ConvSeg().eval(), make_labels(), rand_x(19)
    out = pipe(x0, 3, guidance=build_guidance("sgg", seg, y), generator=torch.Generator())
    assert out.shape == x0.shape and torch.isfinite(out).all()
    assert all(p.grad is None for p in unet.parameters())
    # the adapter: .sample outputs, tuples, learned-variance (2C channels) outputs
    t = torch.zeros(B, dtype=torch.long)
    with torch.no_grad():
        torch.testing.assert_close(as_eps_fn(unet)(x0, t), unet(x0, t).sample)
    assert torch.equal(as_eps_fn(lambda x, t: (x * 2,))(x0, t), x0 * 2)
    assert torch.equal(as_eps_fn(lambda x, t: torch.cat([x, -x], 1))(x0, t), x0)


# ----------------------------------------------------------------------------- sampler vs theory
class GaussianEps(nn.Module):
    """The exact noise predictor for data x0 ~ N(m, s^2 I): with abar = alphas_cumprod at the
    model timestep, E[eps | x_t] = sqrt(1 - abar) (x_t - sqrt(abar) m) / (abar s^2 + 1 - abar)."""

    def __init__(self, sched: DDPMSchedule, m: float, s: float) -> None:
        super().__init__()
        self.abar = sched.values("alphas_cumprod", torch.float32)
        self.m, self.s = m, s

    def forward(self, x, t):
        a = self.abar[t].reshape(-1, *([1] * (x.ndim - 1)))
        return (1 - a).sqrt() * (x - a.sqrt() * self.m) / (a * self.s**2 + 1 - a)


def test_sampler_with_exact_model_reproduces_target_distribution(sched):
    """Ancestral sampling (Eq. 3-4, Sigma = beta_t) with the exact eps of a Gaussian target
    distribution must land on that distribution: from pure noise, and when translating
    source samples of another distribution with n = T (phi^T forgets the source)."""
    m, s = 0.3, 0.5
    eps = GaussianEps(sched, m, s)
    g = torch.Generator().manual_seed(0)
    x = reverse(torch.randn((4096, 1, 2, 2), generator=g), 1000, eps, sched, generator=g)
    assert x.mean().item() == pytest.approx(m, abs=0.02)
    assert x.std().item() == pytest.approx(s, abs=0.015)  # eps scaled by 0.95 gives 0.53
    src = -0.6 + 0.1 * torch.randn((4096, 1, 2, 2), generator=g)
    y = translate(src, 1000, eps, sched, generator=g)
    assert y.mean().item() == pytest.approx(m, abs=0.02)
    assert y.std().item() == pytest.approx(s, abs=0.02)


def test_translation_depth_interpolates_between_domains(sched):
    """phi^n with the exact target model moves the source mean monotonically towards the
    target's as n grows (the intermediate domains of PTL), and stays near it for small n."""
    m, s = 0.3, 0.5
    eps = GaussianEps(sched, m, s)
    src = torch.full((2048, 1, 2, 2), -0.6)
    means = []
    for n in (1, 50, 200, 400, 700):
        g = torch.Generator().manual_seed(1)
        means.append(translate(src, n, eps, sched, generator=g).mean().item())
    assert means[0] == pytest.approx(-0.6, abs=0.01)
    assert all(a < b for a, b in zip(means, means[1:], strict=False))
    assert means[-1] == pytest.approx(m, abs=0.05)
