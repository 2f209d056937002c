"""Mixed precision (`amp`): what each setting does on each device, and that the CPU's default
stays float32 (bit-identical to `amp: false`) while `amp: bf16` really computes in bf16 there."""

from __future__ import annotations

import pytest
import torch

from diffdass.adaptation.config import OptimConfig
from diffdass.adaptation.seg_training import SegTrainer
from diffdass.adaptation.translation import GuidanceConfig, SamplerConfig, translate_batch
from diffdass.diffusion.schedule import DDPMSchedule
from diffdass.models import build_segmenter
from diffdass.models.unet import build_unet
from diffdass.pipeline.config import fill_config, load_pipeline_config
from diffdass.utils.config import ConfigError
from diffdass.utils.device import amp_dtype, autocast

pytestmark = pytest.mark.usefixtures("one_thread")

CPU, CUDA, MPS = torch.device("cpu"), torch.device("cuda"), torch.device("mps")


@pytest.mark.parametrize(
    "device,amp,expected",
    [
        (CPU, True, None),  # the default: float32 on the CPU
        (CPU, False, None),
        (CPU, "bf16", torch.bfloat16),
        (CUDA, True, torch.bfloat16),
        (CUDA, "bf16", torch.bfloat16),
        (CUDA, False, None),
        (MPS, "bf16", None),  # no bf16 autocast there
    ],
)
def test_amp_dtype_per_device_and_setting(device, amp, expected):
    assert amp_dtype(device, amp) is expected


def test_cpu_autocast_computes_in_bf16_only_when_asked():
    lin = torch.nn.Linear(4, 4)
    x = torch.randn(2, 4)
    with autocast(CPU, "bf16"):
        assert lin(x).dtype == torch.bfloat16
    with autocast(CPU, True):
        assert lin(x).dtype == torch.float32
    with autocast(CPU, False):
        assert lin(x).dtype == torch.float32


def _one_step(amp) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    model = build_segmenter("unet_small", 5)
    tr = SegTrainer(model, OptimConfig(name="adamw", lr=1e-3), 10, CPU, seed=0, amp=amp)
    g = torch.Generator().manual_seed(1)
    x = torch.rand(2, 3, 32, 64, generator=g) * 2 - 1
    y = torch.randint(0, 5, (2, 32, 64), generator=g)
    stats = tr.step(0, [(x, y)])
    assert torch.isfinite(torch.tensor(stats["loss"]))
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_segmenter_step_bf16_on_cpu_acts_and_stays_close():
    fp32 = _one_step(False)
    default = _one_step(True)
    bf16 = _one_step("bf16")
    # the CPU default is float32: bit-identical to amp off
    assert all(torch.equal(fp32[k], default[k]) for k in fp32)
    # bf16 changes the step (it acts) but the weights stay float32 and close
    diffs = [(bf16[k].float() - fp32[k].float()).abs().max().item() for k in fp32]
    assert all(bf16[k].dtype == fp32[k].dtype for k in fp32)
    assert max(diffs) > 0
    ref = max(fp32[k].float().abs().max().item() for k in fp32)
    assert max(diffs) < 0.05 * ref


def _translate(amp) -> torch.Tensor:
    torch.manual_seed(0)
    unet = build_unet("tiny", sample_size=(16, 32)).eval()
    seg = build_segmenter("unet_small", 5).eval()
    g = torch.Generator().manual_seed(3)
    x = torch.rand(2, 3, 16, 32, generator=g) * 2 - 1
    y = torch.randint(0, 5, (2, 16, 32), generator=g)
    guidance = GuidanceConfig(kind="sgg", scale=0.5, amp=amp)
    return translate_batch(
        x,
        y,
        200,
        unet,
        DDPMSchedule(1000),
        seg,
        guidance,
        torch.Generator().manual_seed(4),
        respace_steps=3,
        sampler=SamplerConfig(variance="fixed_small"),
    )


def test_translation_bf16_on_cpu_acts_and_stays_close():
    fp32, default, bf16 = _translate(False), _translate(True), _translate("bf16")
    assert torch.equal(fp32, default)  # the CPU default: float32
    assert bf16.dtype == torch.float32
    rms = (bf16 - fp32).pow(2).mean().sqrt().item()
    assert 0 < rms < 0.05, rms


def test_pipeline_amp_reaches_every_stage_and_refuses_a_conflict():
    cfg = fill_config(load_pipeline_config(None, ["amp=bf16"]))
    assert (cfg.source_only.amp, cfg.ddpm.amp, cfg.ptl.amp, cfg.ptl.guidance.amp) == ("bf16",) * 4
    cfg = fill_config(load_pipeline_config(None, ["amp=null"]))  # none: the stages keep theirs
    assert cfg.amp is None and cfg.source_only.amp is True and cfg.ptl.guidance.amp is True
    with pytest.raises(ConfigError, match="ddpm.amp is set by the pipeline from `amp`"):
        fill_config(load_pipeline_config(None, ["amp=bf16", "ddpm.amp=false"]))
    with pytest.raises(ConfigError, match="amp"):
        load_pipeline_config(None, ["amp=fp16"])
