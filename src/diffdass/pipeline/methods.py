"""The method registry: every model a run trains and scores, declared once.

A :class:`Method` says when it runs (``enabled``), how it is trained and scored (``run``),
which stages' wall time trains it (Table 4), and how it is named in the printed summary, the
report, and the ablation tables. ``diffdass run``, ``diffdass ablate``, the summary and the
report all iterate :data:`METHODS`; adding a method means adding an entry here, its own
module in ``adaptation/`` and its config section (``docs/architecture.md``).

:data:`METHODS` is in run order (a method runs after those it reads: the calibration of
PTL scores translations with the oracle when there is one). Tables list the methods in
this order, with the references (the oracle) last.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from diffdass.adaptation.cicld import train_cicld
from diffdass.adaptation.dacs import train_dacs
from diffdass.adaptation.ddpm_training import train_ddpm
from diffdass.adaptation.ptl import run_ptl
from diffdass.adaptation.seg_training import train_segmenter
from diffdass.pipeline.config import PipelineConfig
from diffdass.pipeline.guidance import calibrate, judge_config, needs_calibration, resolved_ptl
from diffdass.pipeline.scoring import (
    adabn_baseline,
    cicld_probes,
    evaluate_checkpoint,
    evaluate_stage,
)


@dataclass
class Context:
    """What a method's ``run`` gets: the filled config, the run folder, the stage timer
    ``stage(name, fn)``, a log function, the progress flag, and ``extras`` for what a method
    adds to the summary (e.g. PTL's calibration)."""

    cfg: PipelineConfig
    out: Path
    stage: Callable
    log: Callable[[str], None]
    progress: bool = True
    extras: dict = field(default_factory=dict)

    def final(self, key: str) -> Path:
        """The final checkpoint of the stage trained in ``out/<key>``."""
        return self.out / key / "checkpoints" / "final.safetensors"


@dataclass(frozen=True)
class Method:
    """One row of a run's results.

    - ``key``: the summary key and the run sub-folder (``OUT/<key>/``).
    - ``label``: the row label of the summary and the report; ``short``: its name in the
      per-class series and in sentences; ``symbol``: the model's symbol (g_N).
    - ``role``: ``baseline`` (no target training), ``adaptation`` (the methods compared),
      ``variant`` (another scoring of an adaptation method's model), or ``reference`` (reads
      target labels; shown last).
    - ``versus_adabn``: what its difference to the AdaBN baseline means, when the generic
      "is (not) above the AdaBN baseline" does not say it.
    - ``ablation_label``: the row label in ``diffdass ablate`` tables, for the rows every
      seed's shared run provides (None: not an ablation row).
    - ``trains``: the stages whose wall time trains it (Table 4; DACS and PTL continue g_0).
    """

    key: str
    label: str
    short: str
    role: str
    enabled: Callable[[PipelineConfig], bool]
    run: Callable[[Context], dict | None]
    symbol: str = ""
    ablation_label: str | None = None
    trains: tuple[str, ...] = ()
    versus_adabn: str | None = None


def _source_only(ctx: Context) -> dict:
    cfg, out = ctx.cfg, ctx.out
    ctx.stage(
        "source_only", lambda: train_segmenter(cfg.source_only, out / "source_only", ctx.progress)
    )
    return ctx.stage("eval_source_only", lambda: evaluate_stage(cfg, out, "source_only"))


def _adabn(ctx: Context) -> dict | None:
    g0 = ctx.final("source_only")
    return ctx.stage("adabn", lambda: adabn_baseline(ctx.cfg, g0, ctx.out / "adabn", echo=ctx.log))


def _oracle(ctx: Context) -> dict:
    cfg, out = ctx.cfg, ctx.out
    ocfg = dataclasses.replace(cfg.source_only, source=cfg.oracle)
    ctx.stage("oracle", lambda: train_segmenter(ocfg, out / "oracle", ctx.progress))
    go = ctx.final("oracle")
    return ctx.stage(
        "eval_oracle",
        lambda: evaluate_checkpoint(
            go, cfg.val, cfg.evaluation, out / "oracle" / "eval", cfg.device
        ),
    )


def _ptl(ctx: Context) -> dict:
    cfg, out = ctx.cfg, ctx.out
    ctx.stage("ddpm", lambda: train_ddpm(cfg.ddpm, out / "ddpm", ctx.progress))
    if needs_calibration(cfg):
        ctx.stage("judge", lambda: train_segmenter(judge_config(cfg), out / "judge", ctx.progress))
        g0 = ctx.final("source_only")
        ctx.extras["calibration"] = ctx.stage(
            "calibration", lambda: calibrate(cfg, out, g0, ctx.progress)
        )
    ptl_cfg = resolved_ptl(cfg, out)
    ctx.stage("ptl", lambda: run_ptl(ptl_cfg, out / "ptl", ctx.progress))
    return ctx.stage("eval_ptl", lambda: evaluate_stage(cfg, out, "ptl"))


def _ptl_adabn(ctx: Context) -> dict | None:
    gN = ctx.final("ptl")
    return ctx.stage(
        "ptl_adabn", lambda: adabn_baseline(ctx.cfg, gN, ctx.out / "ptl_adabn", echo=ctx.log)
    )


def _cicld(ctx: Context) -> dict:
    ctx.stage("cicld", lambda: train_cicld(ctx.cfg.cicld, ctx.out / "cicld", ctx.progress))
    res = ctx.stage("eval_cicld", lambda: evaluate_stage(ctx.cfg, ctx.out, "cicld"))
    ctx.extras["cicld_probes"] = ctx.stage("cicld_probes", lambda: cicld_probes(ctx.cfg, ctx.out))
    return res


def _dacs(ctx: Context) -> dict:
    ctx.stage("dacs", lambda: train_dacs(ctx.cfg.dacs, ctx.out / "dacs", ctx.progress))
    return ctx.stage("eval_dacs", lambda: evaluate_stage(ctx.cfg, ctx.out, "dacs"))


#: every method, in run order
METHODS: tuple[Method, ...] = (
    Method(
        "source_only",
        label="source-only g_0 (trained on source labels only)",
        short="source-only",
        role="baseline",
        enabled=lambda cfg: True,
        run=_source_only,
        symbol="g_0",
        ablation_label="source-only g_0",
        trains=("source_only",),
    ),
    Method(
        "adabn",
        label="AdaBN baseline (g_0 + target BatchNorm statistics)",
        short="AdaBN",
        role="baseline",
        enabled=lambda cfg: True,
        run=_adabn,
        ablation_label="AdaBN (g_0 with target BN statistics)",
    ),
    Method(
        "oracle",
        label="target oracle (reads target labels; an upper bound)",
        short="oracle",
        role="reference",
        enabled=lambda cfg: cfg.oracle is not None,
        run=_oracle,
        ablation_label="target oracle",
    ),
    Method(
        "ptl",
        label="PTL (label-guided translation): g_N after PTL on guided diffusion translations",
        short="PTL (label-guided translation)",
        role="adaptation",
        enabled=lambda cfg: cfg.ptl is not None,
        run=_ptl,
        symbol="g_N",
        trains=("source_only", "ddpm", "ptl"),
    ),
    Method(
        "ptl_adabn",
        label="g_N + target BatchNorm statistics (AdaBN on top)",
        short="g_N + AdaBN",
        role="variant",
        enabled=lambda cfg: cfg.ptl is not None and cfg.evaluation.adabn_on_top,
        run=_ptl_adabn,
        symbol="g_N + BN",
        versus_adabn="both with target BatchNorm statistics: what PTL adds beyond them",
    ),
    Method(
        "cicld",
        label="CICLD: EMA model of the adversarial latent diffusion",
        short="CICLD",
        role="adaptation",
        enabled=lambda cfg: cfg.cicld is not None,
        run=_cicld,
        symbol="CICLD",
        trains=("cicld",),
    ),
    Method(
        "dacs",
        label="DACS baseline: EMA model of g_0 + ClassMix self-training",
        short="DACS",
        role="adaptation",
        enabled=lambda cfg: cfg.dacs is not None,
        run=_dacs,
        symbol="DACS",
        ablation_label="DACS baseline (g_0 + ClassMix self-training)",
        trains=("source_only", "dacs"),
    ),
)
BY_KEY = {m.key: m for m in METHODS}


def display_order(keys) -> list[str]:
    """``keys`` in the order tables show them: run order, the references last."""
    known = [m.key for m in METHODS if m.role != "reference"]
    known += [m.key for m in METHODS if m.role == "reference"]
    return [k for k in known if k in set(keys)]


def describe(keys) -> dict[str, dict]:
    """The labels of ``keys`` in display order, as the summary stores them for the report."""
    return {
        k: {"label": BY_KEY[k].label, "short": BY_KEY[k].short, "role": BY_KEY[k].role}
        for k in display_order(keys)
    }
