"""``diffdass ablate``: the paper's ablations (Tables 2, 3, 5, appendix C, Fig. 5 sweeps) and
the toolkit's own options (group ``options``) over several seeds, as a markdown table of mean
and spread, with the AdaBN baseline of every seed.

Per seed, the shared stages (benchmark, source-only g_0, target DDPM, oracle) run once in
``OUT/seed<s>/base``; each row then runs PTL (and, where the row changes it, its own g_0)
with the row's overrides and is scored on the labeled target split. Every row reuses
finished work, so an interrupted ablation continues where it stopped, and rows whose
training is identical (the full method is row (f) of Table 2, (b) of Table 3, (c) of
Table 5 and (b) of appendix C; it is also the shared run's own PTL stage) are computed once.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from diffdass.adaptation.ptl import run_ptl
from diffdass.adaptation.seg_training import train_segmenter
from diffdass.cli.pipeline import PipelineConfig, _fill, evaluate_checkpoint, run_pipeline
from diffdass.evaluation.report import sweep_plot
from diffdass.utils.config import ConfigError, from_dict, to_dict
from diffdass.utils.io import atomic_write_bytes, atomic_write_text, read_json, write_json


@dataclass(frozen=True)
class Row:
    group: str
    name: str
    paper: str  # the paper's number for G->C, R101, for orientation only
    ptl: dict = field(default_factory=dict)  # overrides of the PTL config
    source_only: dict = field(default_factory=dict)  # overrides of g_0 training (own g_0)
    single_domain: bool = False  # translate once at n = N, same fine-tuning budget


ROWS: dict[str, list[Row]] = {
    "table2": [
        Row(
            "table2",
            "(a) baseline phi^N, then training",
            "48.3",
            {"guidance.kind": "none"},
            single_domain=True,
        ),
        Row("table2", "(b) w/o SGG", "55.4", {"guidance.kind": "none"}),
        Row("table2", "(c) w/o PTL", "58.3", {}, single_domain=True),
        Row("table2", "(d) w/o LCG (GSG only)", "59.8", {"guidance.kind": "gsg"}),
        Row("table2", "(e) w/o GSG (LCG only)", "60.5", {"guidance.kind": "lcg"}),
        Row("table2", "(f) full", "61.9", {}),
    ],
    "table3": [
        Row("table3", "(a) L_ada only", "61.5", {"loss_src": False}),
        Row("table3", "(b) L_ada + L_src", "61.9", {}),
    ],
    "table5": [
        Row("table5", "(a) LCG/GSG", "61.4", {"guidance.arrangement": "lcg_then_gsg"}),
        Row("table5", "(b) GSG/LCG", "61.3", {"guidance.arrangement": "gsg_then_lcg"}),
        Row("table5", "(c) alternate", "61.9", {}),
        Row("table5", "(d) RandMix", "61.6", {"guidance.arrangement": "random"}),
    ],
    "appendix_c": [
        Row(
            "appendix_c",
            "(a) w/o noisy-masked augmentation",
            "61.7",
            {"noisy_masked.prob": 0.0},
            {"noisy_masked.prob": 0.0},
        ),
        Row("appendix_c", "(b) with augmentation", "61.9", {}),
    ],
    # beyond the paper: the toolkit's options, each against the full method (same seed)
    "options": [
        Row(
            "options",
            "paper sampler (fixed_large, no x0 clipping)",
            "",
            {"sampler.variance": "fixed_large", "sampler.clip_x0": False},
        ),
        Row("options", "paper LCG weighting (per-region mean)", "", {"guidance.reduction": "mean"}),
        Row("options", "guidance on predicted x0", "", {"guidance.input": "x0"}),
        Row(
            "options",
            "guidance on predicted x0 through the UNet",
            "",
            {"guidance.input": "x0_unet"},
        ),
        Row("options", "guidance only at t < 100", "", {"guidance.max_t": 99}),
        Row("options", "BatchNorm: one joint forward", "", {"bn": "joint"}),
        Row("options", "BatchNorm: frozen", "", {"bn": "frozen"}),
    ],
}
ADABN = "AdaBN (g_0 with target BN statistics)"


def sweep_rows(kind: str, values: list[float]) -> list[Row]:
    if kind == "sweep_n":
        return [Row("sweep_n", f"N = {int(v)}", "", {"n_max": int(v)}) for v in values]
    if kind == "sweep_lambda":
        return [
            Row("sweep_lambda", f"lambda = {v:g}", "", {"guidance.scale": float(v)}) for v in values
        ]
    raise ValueError(kind)


def _apply(obj, overrides: dict):
    d = to_dict(obj)
    for key, v in overrides.items():
        cur = d
        *parts, last = key.split(".")
        for p in parts:
            cur = cur[p]
        if last not in cur:
            raise ConfigError(f"ablation override {key}: unknown key")
        cur[last] = v
    return from_dict(type(obj), d)


def _slug(row: Row) -> str:
    keep = "".join(ch if ch.isalnum() else "_" for ch in f"{row.group}_{row.name}".lower())
    return "_".join(p for p in keep.split("_") if p)[:60]


def row_configs(base: PipelineConfig, row: Row, out: Path):
    """The PTL config of ``row`` (and its own g_0 config, or None) on top of ``base``."""
    ptl_cfg = _apply(base.ptl, row.ptl)
    if row.single_domain:
        k = len(base.ptl.levels())
        ptl_cfg = dataclasses.replace(
            ptl_cfg,
            domains="spread",
            num_domains=1,
            iterations_per_domain=base.ptl.iterations_per_domain * k,
            reverse_steps=ptl_cfg.reverse_steps if base.ptl.domains == "spread" else None,
        )
    so = None
    if row.source_only:
        so = _apply(base.source_only, row.source_only)
        ptl_cfg = dataclasses.replace(
            ptl_cfg, init=str(out / "source_only" / "checkpoints" / "final.safetensors")
        )
    return dataclasses.replace(ptl_cfg, eval_every=0, strip_images=0), so


def training_signature(ptl_cfg, so_cfg) -> str:
    """What determines a row's g_N: the PTL config (minus evaluation and strip settings, which
    do not touch training) and the g_0 config when the row trains its own."""
    d = to_dict(ptl_cfg)
    for k in ("eval_every", "strip_images", "num_workers"):
        d.pop(k, None)
    return json.dumps({"ptl": d, "g0": to_dict(so_cfg) if so_cfg else None}, sort_keys=True)


def run_row(base: PipelineConfig, row: Row, seed_dir: Path, progress: bool) -> float:
    """Run one ablation row on top of the seed's shared stages; returns target mIoU."""
    out = seed_dir / _slug(row)
    key = base.evaluation.class_sets[0]
    ptl_cfg, so = row_configs(base, row, out)
    if so is not None:
        train_segmenter(so, out / "source_only", progress)
    run_ptl(ptl_cfg, out / "ptl", progress)
    gN = out / "ptl" / "checkpoints" / "final.safetensors"
    res = evaluate_checkpoint(gN, base.val, base.evaluation, out / "eval", base.device)
    return float(res["miou"][key])


def select_rows(
    groups: list[str],
    sweep_n: list[float] | None = None,
    sweep_lambda: list[float] | None = None,
    only: list[str] | None = None,
) -> list[Row]:
    """The rows of ``groups`` (keys of :data:`ROWS`, ``sweep_n``, ``sweep_lambda``), filtered
    by ``only`` (label fragments, see :func:`run_ablation`)."""
    rows: list[Row] = []
    for g in groups:
        if g in ROWS:
            rows += ROWS[g]
        elif g == "sweep_n":
            rows += sweep_rows(g, sweep_n or [])
        elif g == "sweep_lambda":
            rows += sweep_rows(g, sweep_lambda or [])
        else:
            raise ConfigError(
                f"unknown ablation group {g!r}; choose from {[*ROWS, 'sweep_n', 'sweep_lambda']}"
            )
    if only:
        rows = [r for r in rows if any(o in f"{r.group}: {r.name}" for o in only)]
        if not rows:
            raise ConfigError(f"no ablation row matches {only}; see `diffdass ablate --help`")
    return rows


def run_ablation(
    cfg: PipelineConfig,
    out: str | Path,
    groups: list[str],
    seeds: list[int],
    sweep_n: list[float] | None = None,
    sweep_lambda: list[float] | None = None,
    progress: bool = True,
    echo=print,
    reuse_run: str | Path | None = None,
    only: list[str] | None = None,
) -> Path:
    """Run the chosen row groups for every seed and write ``OUT/ablation.md`` and ``.json``.

    ``reuse_run``: a finished ``diffdass run`` directory made from the same config; it serves
    as the shared stages of its own seed instead of recomputing them.
    ``only``: keep the rows whose label ``"group: name"`` contains one of these strings
    (e.g. ``["table2: (a)"]``); the shared rows (source-only, AdaBN, oracle, full method)
    are always there.
    """
    rows = select_rows(groups, sweep_n, sweep_lambda, only)
    out = Path(out)
    results_path = out / "ablation.json"
    results: dict = read_json(results_path) if results_path.is_file() else {}
    for seed in seeds:
        seed_dir = out / f"seed{seed}"
        base = copy.deepcopy(cfg)
        base.seed = seed
        base.out = str(seed_dir / "base")
        if reuse_run is not None and seed == cfg.seed:
            base.out = str(reuse_run)
        elif base.benchmark.enabled and not base.benchmark.root:
            base.benchmark.root = str(out / "data")  # one benchmark for all seeds
        echo(f"[ablate] seed {seed}: shared stages")
        summary = run_pipeline(base, progress=progress, echo=echo)
        base = _fill(base)
        res = results.setdefault(str(seed), {})
        res["source-only g_0"] = summary["miou"]["source_only"]
        if "adabn" in summary["miou"]:
            res[ADABN] = summary["miou"]["adabn"]
        if "oracle" in summary["miou"]:
            res["target oracle"] = summary["miou"]["oracle"]
        # rows whose training is identical (the full method appears in Tables 2, 3, 5 and
        # appendix C) are computed once; the full method is the shared run's own PTL stage
        full_sig = training_signature(*row_configs(base, Row("", "", ""), seed_dir))
        done = {full_sig: summary["miou"]["ptl"]}
        for row in rows:
            label = f"{row.group}: {row.name}"
            sig = training_signature(*row_configs(base, row, seed_dir / _slug(row)))
            if label in res:
                done.setdefault(sig, res[label])
                continue
            if sig in done:
                echo(f"[ablate] seed {seed}: {label} (same training as an earlier row, reused)")
                res[label] = done[sig]
            else:
                echo(f"[ablate] seed {seed}: {label}")
                res[label] = done[sig] = run_row(base, row, seed_dir, progress)
            write_json(results_path, results)
        write_json(results_path, results)
    md = format_table(results, table_rows(results, rows), cfg.evaluation.class_sets[0])
    atomic_write_text(out / "ablation.md", md)
    png = sweep_plot(results, cfg.evaluation.class_sets[0])
    if png is not None:
        atomic_write_bytes(out / "fig5_sweeps.png", png)
    return out / "ablation.md"


FULL = "table2: (f) full"


def _sweep_key(label: str) -> tuple[str, float, str]:
    """Sort ``"sweep_n: N = 100"`` numerically within its group (200 before 1000)."""
    group, _, name = label.partition(": ")
    try:
        return group, float(name.split("=", 1)[1]), name
    except (IndexError, ValueError):
        return group, float("inf"), name


def table_rows(results: dict, rows: list[Row]) -> list[Row]:
    """The rows to tabulate: those just run plus every other row already in ``results``
    (earlier invocations with other groups or seeds), in the paper's order."""
    present = {lab for res in results.values() for lab in res}
    known = [r for group in ROWS.values() for r in group]
    out = [r for r in known if r in rows or f"{r.group}: {r.name}" in present]
    labels = {f"{r.group}: {r.name}" for r in out}
    for r in rows:  # sweeps of this call
        if f"{r.group}: {r.name}" not in labels:
            out.append(r)
            labels.add(f"{r.group}: {r.name}")
    for lab in sorted(
        present - labels - {"source-only g_0", "target oracle", ADABN}, key=_sweep_key
    ):
        group, _, name = lab.partition(": ")
        out.append(Row(group, name, ""))  # sweeps of earlier calls
    return out


def format_table(results: dict, rows: list[Row], key: str) -> str:
    """Markdown: per row the mean, sample std and per-seed values of target mIoU, and the
    paired difference to the full method (same seed) as mean +- std over the seeds that
    have both; the paper's G->C number for orientation."""
    seeds = sorted(results, key=int)
    labels = ["source-only g_0", ADABN, "target oracle"] + [f"{r.group}: {r.name}" for r in rows]
    paper = {f"{r.group}: {r.name}": r.paper for r in rows} | {"source-only g_0": "37.3"}
    lines = [
        f"| row | target mIoU{key} mean | std | n seeds | per seed | minus full (paired) "
        "| paper (G->C, R101) |",
        "|---|---:|---:|---:|---|---:|---:|",
    ]
    for lab in labels:
        vals = [results[s][lab] for s in seeds if lab in results[s]]
        if not vals:
            continue
        mean = statistics.fmean(vals)
        std = f"{statistics.stdev(vals):.1f}" if len(vals) > 1 else "-"
        per = ", ".join(f"{v:.1f}" for v in vals)
        diffs = [
            results[s][lab] - results[s][FULL] for s in seeds if {lab, FULL} <= results[s].keys()
        ]
        delta = ""
        if diffs and lab != FULL:
            delta = f"{statistics.fmean(diffs):+.1f}"
            if len(diffs) > 1:
                delta += f" +- {statistics.stdev(diffs):.1f}"
        lines.append(
            f"| {lab} | {mean:.1f} | {std} | {len(vals)} | {per} | {delta} | {paper.get(lab, '')} |"
        )
    return "\n".join(lines) + "\n"
