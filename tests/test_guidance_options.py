"""Guidance weighting (bounded LCG), guidance on the predicted x_0, and AdaBN."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from diffdass.adaptation.adabn import adabn
from diffdass.diffusion.guidance import GSG, LCG
from diffdass.diffusion.sampler import SamplerOptions, reverse_step
from diffdass.diffusion.schedule import DDPMSchedule
from test_diffusion import IGN, NCLS, ConvSeg, eps_fn, global_ce, make_labels, rand_x

SCHED = DDPMSchedule()


def one_pixel_region_labels() -> torch.Tensor:
    y = make_labels().clone()
    y[:, 5, 7] = NCLS - 1  # a 1-pixel region of the last class (in both images)
    y[y == NCLS - 1] = 0
    y[:, 5, 7] = NCLS - 1
    return y


def test_image_mean_lcg_weighs_a_pixel_like_gsg():
    """image_mean: sum_c L_c per image == sum_c sum_{p in m_c} ce_p / |V| == GSG's loss with a
    segmenter that cannot see outside the region (pixel-wise), and the 1-pixel region's shift is
    no larger than a large region's."""
    y, x = one_pixel_region_labels(), rand_x(3)
    pix = nn.Conv2d(3, NCLS, 1).eval()
    lcg = LCG(pix, y, mode="loop", reduction="image_mean")
    gsg = GSG(pix, y, reduction="image_mean")
    torch.testing.assert_close(lcg.loss(x), gsg.loss(x), rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(lcg.gradient(x), gsg.gradient(x), rtol=1e-4, atol=1e-9)
    # the literal per-region mean puts |V| / |m_c| times the weight on the 1-pixel region
    lit = LCG(pix, y, mode="loop", reduction="mean").gradient(x)
    g = lcg.gradient(x)
    tiny = (y == NCLS - 1)[:, None].expand_as(g)
    ratio = lit[tiny].abs().max() / g[tiny].abs().max()
    n_valid = (y != IGN).sum((1, 2)).float().mean()
    assert ratio == pytest.approx(n_valid.item(), rel=0.05)


@pytest.mark.parametrize("mode", ["batched", "single_pass"])
def test_image_mean_modes_agree_with_loop(mode):
    y, x = one_pixel_region_labels(), rand_x(4)
    seg = ConvSeg().eval()
    ref = LCG(seg, y, mode="loop", reduction="image_mean").gradient(x)
    got = LCG(seg, y, mode=mode, reduction="image_mean").gradient(x)
    if mode == "batched":
        torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-9)
    else:  # an approximation; same scale
        assert got.norm() == pytest.approx(ref.norm().item(), rel=0.5)


def test_image_mean_shift_is_bounded_by_gsg_bound():
    """Documented bound: |shift|_2 <= scale * Sigma * sqrt(2) * J per image (J: the operator
    norm of a 1x1 linear segmenter's weight), for image_mean LCG and GSG alike."""
    y, x = one_pixel_region_labels(), 3 * rand_x(5)
    pix = nn.Conv2d(3, NCLS, 1).eval()
    J = torch.linalg.matrix_norm(pix.weight.detach()[:, :, 0, 0], ord=2).item()
    scale, var = 80.0, 0.01
    im = "image_mean"
    for guide in (GSG(pix, y, scale, reduction=im), LCG(pix, y, scale, mode="loop", reduction=im)):
        shift = guide(x, 10, 10, var)
        per_image = shift.flatten(1).norm(dim=1)
        assert (per_image <= scale * var * 2**0.5 * J * 1.0001).all()


@pytest.mark.parametrize("where", ["x0", "x0_unet"])
def test_guidance_on_predicted_x0_lowers_cross_entropy(where):
    seg, y, x_t = ConvSeg().eval(), make_labels(), rand_x(12)
    t = 20
    z = torch.randn(x_t.shape, generator=torch.Generator().manual_seed(13))
    var = SCHED.variance(t)
    opts = SamplerOptions(guidance_input=where)
    base = reverse_step(x_t, t, eps_fn, SCHED, noise=z, options=opts)
    up = reverse_step(x_t, t, eps_fn, SCHED, noise=z, guidance=GSG(seg, y, 100 / var), options=opts)
    down = reverse_step(
        x_t, t, eps_fn, SCHED, noise=z, guidance=GSG(seg, y, -100 / var), options=opts
    )
    l0, l1, l2 = (global_ce(seg, v, y) for v in (base, up, down))
    assert l1 < l0 - 1e-3 * l0 < l0 < l2


def test_x0_guidance_through_unet_equals_chain_rule_for_linear_eps():
    """With eps(x) = a x (a UNet whose Jacobian is a*I), d x0 / d x_t = (1 - sqrt(1-abar) a) /
    sqrt(abar): "x0_unet" must equal the "x0" shift times (1 - sqrt(1 - abar) a)."""
    seg, y, x_t = ConvSeg().eval(), make_labels(), rand_x(2)
    a, t = 0.3, 50

    def lin_eps(x, tt):
        return a * x

    ab = SCHED.values("alphas_cumprod")[t].item()
    g = GSG(seg, y, 1e5)
    mean0 = reverse_step(x_t, t, lin_eps, SCHED, options=SamplerOptions(guidance_input="x0"))
    plain = reverse_step(x_t, t, lin_eps, SCHED)
    with_unet = reverse_step(
        x_t, t, lin_eps, SCHED, guidance=g, options=SamplerOptions(guidance_input="x0_unet")
    )
    no_unet = reverse_step(
        x_t, t, lin_eps, SCHED, guidance=g, options=SamplerOptions(guidance_input="x0")
    )
    torch.testing.assert_close(mean0, plain)
    factor = 1 - (1 - ab) ** 0.5 * a
    torch.testing.assert_close(with_unet - plain, (no_unet - plain) * factor, rtol=1e-3, atol=1e-6)


# ------------------------------------------------------------------------------- AdaBN
class BNNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.drop = nn.Dropout(0.5)
        self.head = nn.Conv2d(4, 2, 1)

    def forward(self, x):
        return self.head(self.drop(torch.relu(self.bn(self.conv(x)))))


def test_adabn_changes_only_batchnorm_statistics():
    torch.manual_seed(0)
    net = BNNet()
    net.bn.running_mean.fill_(5.0)
    before = copy.deepcopy(net.state_dict())
    imgs = [torch.randn(4, 3, 8, 8) + 2.0 for _ in range(3)]
    info = adabn(net, imgs)
    assert info == {"layers": 1, "images": 12}
    after = net.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == {"bn.running_mean", "bn.running_var", "bn.num_batches_tracked"}
    # the mean is exactly the target features' mean (equal batch sizes)
    with torch.no_grad():
        feats = torch.cat([net.conv(x) for x in imgs])
    torch.testing.assert_close(net.bn.running_mean, feats.mean((0, 2, 3)), rtol=1e-5, atol=1e-6)
    assert net.bn.momentum == 0.1 and net.training and net.drop.training  # restored


def test_adabn_without_images_leaves_the_model_untouched():
    net = BNNet()
    before = copy.deepcopy(net.state_dict())
    with pytest.raises(ValueError, match="no target image"):
        adabn(net, [])
    for k, v in net.state_dict().items():
        assert torch.equal(v, before[k]), k
