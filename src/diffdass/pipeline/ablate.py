"""``diffdass ablate``: the paper's ablations (Tables 2, 3, 5, appendix C, Fig. 5 sweeps) and
the toolkit's own options (group ``options``) over several seeds, as a markdown table of mean
and spread, with the AdaBN baseline of every seed.

Per seed, the shared stages (benchmark, source-only g_0, target DDPM, oracle) run once in
``OUT/seed<s>/base``; each row then runs PTL (and, where the row changes it, its own g_0)
with the row's overrides and is scored on the labeled target split. Every row reuses
finished work, so an interrupted ablation continues where it stopped, and rows whose
training is identical (the full method is row (f) of Table 2, (b) of Table 3, (c) of
Table 5 and (b) of appendix C; it is also the shared run's own PTL stage) are computed once.

CICLD's ablations (groups ``cicld_table1``: conditioning x inter-coder connection, and
``cicld_table2``: the adversarial loss) are rows of the same kind: overrides of the config's
``cicld`` section, trained by ``train_cicld`` in the row's folder. They need a config with a
``cicld`` section (e.g. ``configs/cicld_benchmark.yaml``); the full CICLD is the shared run's
own ``cicld`` stage, and the DACS baseline (when the config has a ``dacs`` section) is a shared
row like AdaBN.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import fcntl
import json
import re
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from diffdass.adaptation.cicld import train_cicld
from diffdass.adaptation.ptl import run_ptl
from diffdass.adaptation.seg_training import train_segmenter
from diffdass.evaluation.report import sweep_plot
from diffdass.pipeline.config import PipelineConfig, fill_config
from diffdass.pipeline.guidance import resolved_ptl
from diffdass.pipeline.methods import BY_KEY, display_order
from diffdass.pipeline.scoring import adabn_baseline, evaluate_checkpoint
from diffdass.pipeline.stages import run_pipeline
from diffdass.utils.config import ConfigError, from_dict, load_yaml, to_dict
from diffdass.utils.io import atomic_write_bytes, atomic_write_text, read_json, write_json


@dataclass(frozen=True)
class Row:
    group: str
    name: str
    # the paper's number for G->C, for orientation only (PTL rows: Peng et al. with
    # DeepLab-V2 R101; CICLD rows: Yu et al.)
    paper: str
    ptl: dict = field(default_factory=dict)  # overrides of the PTL config
    source_only: dict = field(default_factory=dict)  # overrides of g_0 training (own g_0)
    single_domain: bool = False  # translate once at n = N, same fine-tuning budget
    cicld: dict = field(default_factory=dict)  # overrides of the cicld section (CICLD rows)
    method: str = "ptl"  # what the row trains: "ptl" or "cicld"


#: the shipped rows (YAML, shipped with the package)
ROWS_FILE = Path(__file__).resolve().parents[1] / "configs" / "ablation_rows.yaml"
#: the keys a row of a rows file may have
ROW_KEYS = ("name", "paper", "method", "ptl", "source_only", "single_domain", "cicld")


def load_rows(path: str | Path) -> dict[str, list[Row]]:
    """The row groups of a rows file (the format of ``configs/ablation_rows.yaml``)."""
    doc = load_yaml(path)
    table: dict[str, list[Row]] = {}
    for group, items in doc.items():
        if not isinstance(items, list) or not items:
            raise ConfigError(f"{path}: group {group!r} must be a non-empty list of rows")
        for i, item in enumerate(items):
            where = f"{path}: {group}[{i}]"
            if not isinstance(item, dict) or "name" not in item:
                raise ConfigError(f"{where}: a row is a mapping with at least a `name`")
            unknown = sorted(set(item) - set(ROW_KEYS))
            if unknown:
                raise ConfigError(f"{where}: unknown keys {unknown}; a row has {list(ROW_KEYS)}")
            method = item.get("method", "ptl")
            if method not in ROW_METHODS:
                raise ConfigError(f"{where}: method {method!r}; choose from {list(ROW_METHODS)}")
            for key in ("ptl", "source_only", "cicld"):
                if not isinstance(item.get(key, {}), dict):
                    raise ConfigError(f"{where}: `{key}` must be a mapping of dotted keys")
            row = Row(
                str(group),
                str(item["name"]),
                str(item.get("paper", "")),
                ptl=dict(item.get("ptl", {})),
                source_only=dict(item.get("source_only", {})),
                single_domain=bool(item.get("single_domain", False)),
                cicld=dict(item.get("cicld", {})),
                method=method,
            )
            if any(r.name == row.name for r in table.get(group, [])):
                raise ConfigError(f"{where}: row name {row.name!r} is already in {group!r}")
            table.setdefault(str(group), []).append(row)
    return table


def with_rows_file(path: str | Path | None) -> dict[str, list[Row]]:
    """The shipped groups plus a user's rows file (its groups must have new names)."""
    if path is None:
        return ROWS
    extra = load_rows(path)
    clash = sorted(set(extra) & {*ROWS, "sweep_n", "sweep_lambda"})
    if clash:
        raise ConfigError(f"{path}: groups {clash} are built in; give yours other names")
    return ROWS | extra


#: the methods a row can train, each the name of a pipeline section and summary row
ROW_METHODS = ("ptl", "cicld")
ROWS: dict[str, list[Row]] = load_rows(ROWS_FILE)
ADABN = BY_KEY["adabn"].ablation_label
#: suffix of a row scored with target BatchNorm statistics (evaluation.adabn_on_top)
ON_TOP = " + AdaBN on top"
DACS = BY_KEY["dacs"].ablation_label


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
        cur[last] = _scaled(key, cur[last], v)
    return from_dict(type(obj), d)


def _scaled(key: str, current, value):
    """``value``, or for ``"*2"`` / ``"/2"`` (any number) the base config's numeric value
    multiplied / divided by it (integers rounded, at least 1)."""
    if not (isinstance(value, str) and re.fullmatch(r"[*/]\d+(\.\d*)?", value)):
        return value
    if isinstance(current, bool) or not isinstance(current, (int, float)):
        raise ConfigError(f"ablation override {key}: {value!r} needs a numeric base value")
    factor = float(value[1:])
    if factor <= 0:
        raise ConfigError(f"ablation override {key}: {value!r}: the factor must be > 0")
    out = current * factor if value[0] == "*" else current / factor
    return max(1, round(out)) if isinstance(current, int) else out


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


def cicld_row_config(base: PipelineConfig, row: Row):
    """The CICLD config of a CICLD ``row``: the (filled) ``cicld`` section with its overrides."""
    return _apply(base.cicld, row.cicld)


def row_signature(base: PipelineConfig, row: Row, out: Path) -> str:
    """What determines a row's trained model: :func:`training_signature` for PTL rows, the
    CICLD config (minus settings that do not touch training) for CICLD rows."""
    if row.method == "cicld":
        d = to_dict(cicld_row_config(base, row))
        for k in ("num_workers", "checkpoint_every", "logging"):
            d.pop(k, None)
        return json.dumps({"cicld": d}, sort_keys=True)
    return training_signature(*row_configs(base, row, out))


def check_methods(cfg: PipelineConfig, rows: list[Row]) -> None:
    """Every method the rows train has its section in the config (before anything runs)."""
    for method in sorted({r.method for r in rows}):
        if getattr(cfg, method) is None:
            groups = sorted({r.group for r in rows if r.method == method})
            raise ConfigError(
                f"the rows of {', '.join(groups)} train {method} and need a `{method}` section in "
                "the config (e.g. configs/cicld_benchmark.yaml for CICLD)"
            )


def run_row(base: PipelineConfig, row: Row, seed_dir: Path, progress: bool) -> float:
    """Run one ablation row on top of the seed's shared stages; returns target mIoU."""
    out = seed_dir / _slug(row)
    key = base.evaluation.class_sets[0]
    if row.method == "cicld":
        train_cicld(cicld_row_config(base, row), out / "cicld", progress)
        ckpt = out / "cicld" / "checkpoints" / "final.safetensors"
        res = evaluate_checkpoint(ckpt, base.val, base.evaluation, out / "eval", base.device)
        return float(res["miou"][key])
    ptl_cfg, so = row_configs(base, row, out)
    if so is not None:
        train_segmenter(so, out / "source_only", progress)
    run_ptl(ptl_cfg, out / "ptl", progress)
    gN = out / "ptl" / "checkpoints" / "final.safetensors"
    res = evaluate_checkpoint(gN, base.val, base.evaluation, out / "eval", base.device)
    return float(res["miou"][key])


def adabn_on_top(base: PipelineConfig, row: Row, seed_dir: Path) -> float | None:
    """A finished PTL row's g_N with target BatchNorm statistics (``evaluation.adabn_on_top``);
    None for a CICLD row or a segmenter without BatchNorm."""
    if row.method != "ptl":
        return None
    out = seed_dir / _slug(row)
    gN = out / "ptl" / "checkpoints" / "final.safetensors"
    res = adabn_baseline(base, gN, out / "adabn_on_top", echo=lambda *_: None)
    return None if res is None else float(res["miou"][base.evaluation.class_sets[0]])


def select_rows(
    groups: list[str],
    sweep_n: list[float] | None = None,
    sweep_lambda: list[float] | None = None,
    only: list[str] | None = None,
    table: dict[str, list[Row]] | None = None,
) -> list[Row]:
    """The rows of ``groups`` (keys of ``table``, default :data:`ROWS`, or ``sweep_n``,
    ``sweep_lambda``), filtered by ``only`` (label fragments, see :func:`run_ablation`)."""
    table = ROWS if table is None else table
    rows: list[Row] = []
    for g in groups:
        if g in table:
            rows += table[g]
        elif g == "sweep_n":
            rows += sweep_rows(g, sweep_n or [])
        elif g == "sweep_lambda":
            rows += sweep_rows(g, sweep_lambda or [])
        else:
            raise ConfigError(
                f"unknown ablation group {g!r}; choose from {[*table, 'sweep_n', 'sweep_lambda']}"
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
    rows_file: str | Path | None = None,
) -> Path:
    """Run the chosen row groups for every seed and write ``OUT/ablation.md`` and ``.json``.

    ``reuse_run``: a finished ``diffdass run`` directory made from the same config; it serves
    as the shared stages of its own seed instead of recomputing them.
    ``only``: keep the rows whose label ``"group: name"`` contains one of these strings
    (e.g. ``["table2: (a)"]``); the shared rows (source-only, AdaBN, oracle, full method)
    are always there.
    ``rows_file``: row groups of your own (the format of ``configs/ablation_rows.yaml``),
    added to the shipped ones.
    """
    table = with_rows_file(rows_file)
    rows = select_rows(groups, sweep_n, sweep_lambda, only, table)
    check_methods(cfg, rows)
    out = Path(out)
    results_path = out / "ablation.json"
    results: dict = _merge_results(results_path, {})
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
        base = fill_config(base)
        if base.ptl is not None:  # `scale: auto`: every row starts from the seed's calibration
            base.ptl = resolved_ptl(base, Path(base.out))
        res = results.setdefault(str(seed), {})
        for key in display_order(summary["miou"]):  # the shared run's rows (registry labels)
            if BY_KEY[key].ablation_label:
                res[BY_KEY[key].ablation_label] = summary["miou"][key]
        # each method's full row is the shared run's own stage: always in the table, so that
        # every row gets its paired difference even when the full row's group was not asked
        for method, label in FULL_OF.items():
            if method in summary["miou"]:
                res[label] = summary["miou"][method]
        if "ptl_adabn" in summary["miou"]:
            res[FULL + ON_TOP] = summary["miou"]["ptl_adabn"]
        # rows whose training is identical (the full method appears in Tables 2, 3, 5 and
        # appendix C, the full CICLD in both of its tables) are computed once; each full
        # method is the shared run's own stage (ptl, cicld)
        done = {
            row_signature(base, Row("", "", "", method=m), seed_dir): summary["miou"][m]
            for m in ROW_METHODS
            if getattr(base, m) is not None
        }
        for row in rows:
            label = f"{row.group}: {row.name}"
            sig = row_signature(base, row, seed_dir / _slug(row))
            if label in res:
                done.setdefault(sig, res[label])
                continue
            if sig in done:
                echo(f"[ablate] seed {seed}: {label} (same training as an earlier row, reused)")
                res[label] = done[sig]
            else:
                echo(f"[ablate] seed {seed}: {label}")
                res[label] = done[sig] = run_row(base, row, seed_dir, progress)
            if base.evaluation.adabn_on_top and label + ON_TOP not in res:
                bn = adabn_on_top(base, row, seed_dir)
                if bn is not None:
                    res[label + ON_TOP] = bn
            results = _merge_results(results_path, results)
            res = results[str(seed)]
        results = _merge_results(results_path, results)
    md = format_table(results, table_rows(results, rows, table), cfg.evaluation.class_sets[0])
    atomic_write_text(out / "ablation.md", md)
    png = sweep_plot(results, cfg.evaluation.class_sets[0])
    if png is not None:
        atomic_write_bytes(out / "fig5_sweeps.png", png)
    return out / "ablation.md"


@contextlib.contextmanager
def _locked(path: Path):
    """An exclusive advisory lock on ``path`` + ``.lock`` (POSIX), held for the block."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _merge_results(path: Path, results: dict) -> dict:
    """Merge ``results`` (seed -> row -> mIoU) into ``path`` and return the union.

    Several ``diffdass ablate`` jobs may share one output folder (say, seeds 1 and 2 in two
    processes, or a sweep beside a table): each one re-reads the file under a lock, adds its
    own rows and writes it back atomically, so no job drops another's rows.
    """
    with _locked(path):
        merged: dict = read_json(path) if path.is_file() else {}
        for seed, rows in results.items():
            merged.setdefault(seed, {}).update(rows)
        write_json(path, merged)
    return merged


FULL = "table2: (f) full"
CICLD_FULL = "cicld_table1: (d) with inter-coder connection, conditioned"
#: the row each method's rows are compared with (paired, same seed)
FULL_OF = {"ptl": FULL, "cicld": CICLD_FULL}
#: the rows every seed's shared run provides, in table order
SHARED = tuple(BY_KEY[k].ablation_label for k in display_order(BY_KEY) if BY_KEY[k].ablation_label)


def _sweep_key(label: str) -> tuple[str, float, str]:
    """Sort ``"sweep_n: N = 100"`` numerically within its group (200 before 1000)."""
    group, _, name = label.partition(": ")
    try:
        return group, float(name.split("=", 1)[1]), name
    except (IndexError, ValueError):
        return group, float("inf"), name


def table_rows(
    results: dict, rows: list[Row], table: dict[str, list[Row]] | None = None
) -> list[Row]:
    """The rows to tabulate: those just run plus every other row already in ``results``
    (earlier invocations with other groups or seeds), in the paper's order."""
    present = {lab for res in results.values() for lab in res}
    known = [r for group in (ROWS if table is None else table).values() for r in group]
    out = [r for r in known if r in rows or f"{r.group}: {r.name}" in present]
    labels = {f"{r.group}: {r.name}" for r in out}
    for r in rows:  # sweeps of this call
        if f"{r.group}: {r.name}" not in labels:
            out.append(r)
            labels.add(f"{r.group}: {r.name}")
    for lab in sorted(present - labels - set(SHARED), key=_sweep_key):
        group, _, name = lab.partition(": ")
        out.append(Row(group, name, ""))  # sweeps of earlier calls
    return out


def format_table(results: dict, rows: list[Row], key: str) -> str:
    """Markdown: per row the mean, sample std and per-seed values of target mIoU, and the
    paired difference to the full method of the row's kind (PTL's or CICLD's; the shared rows
    against PTL's; same seed) as mean +- std over the seeds that have both; the paper's G->C
    number for orientation."""
    seeds = sorted(results, key=int)
    labels = [*SHARED, *(f"{r.group}: {r.name}" for r in rows)]
    paper = {f"{r.group}: {r.name}": r.paper for r in rows} | {"source-only g_0": "37.3"}
    fulls = {f"{r.group}: {r.name}": FULL_OF[r.method] for r in rows}
    lines = [
        f"| row | target mIoU{key} mean | std | n seeds | per seed | minus full (paired) "
        "| paper (G->C; PTL rows: R101) |",
        "|---|---:|---:|---:|---|---:|---:|",
    ]
    for lab in labels:
        vals = [results[s][lab] for s in seeds if lab in results[s]]
        if not vals:
            continue
        mean = statistics.fmean(vals)
        std = f"{statistics.stdev(vals):.1f}" if len(vals) > 1 else "-"
        per = ", ".join(f"{v:.1f}" for v in vals)
        full = FULL + ON_TOP if lab.endswith(ON_TOP) else fulls.get(lab, FULL)
        diffs = [
            results[s][lab] - results[s][full] for s in seeds if {lab, full} <= results[s].keys()
        ]
        delta = ""
        if diffs and lab != full:
            delta = f"{statistics.fmean(diffs):+.1f}"
            if len(diffs) > 1:
                delta += f" +- {statistics.stdev(diffs):.1f}"
        lines.append(
            f"| {lab} | {mean:.1f} | {std} | {len(vals)} | {per} | {delta} | {paper.get(lab, '')} |"
        )
    return "\n".join(lines) + "\n"
