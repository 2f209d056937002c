"""The pipeline report: one self-contained HTML file (images embedded) plus PNGs.

It reads only what the stages wrote (JSON metrics, strip images), never training code:
target mIoU and per-class IoU of every model the run trained (source-only, AdaBN, PTL's g_N,
CICLD, DACS, the oracle; whichever are present), strips of source images across the
intermediate domains (the paper's Fig. 4), mIoU of g_n along n, the time spent per
stage, and a glossary of the symbols and names the tables use.
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

import numpy as np

from diffdass.utils.io import atomic_write_text, read_json, save_image

#: (term, explanation) of every symbol and name the report uses, in its order
GLOSSARY: tuple[tuple[str, str], ...] = (
    (
        "g_0",
        "the source-only segmenter: trained on the labeled source images only; PTL and "
        "DACS start from it.",
    ),
    (
        "g_N",
        "the segmenter after the last PTL domain (n = N, the deepest diffusion depth); "
        "g_n: after the domain of depth n.",
    ),
    (
        "phi^n",
        "intermediate domain n: the source images diffused to depth n by the target "
        "DDPM and denoised back (guided by the source labels, or unguided); a larger n is closer "
        "to the target.",
    ),
    (
        "PTL (label-guided translation)",
        "Peng et al. (ICCV 2023): source images translated "
        "into the target style by a diffusion model guided by their labels, and progressive "
        "translation learning: g_0 fine-tuned on the intermediate domains phi^n in order of n.",
    ),
    (
        "CICLD",
        "conditional and inter-coder connected latent diffusion (Yu, Sun, Luo): a "
        "segmenter built on a latent diffusion model, trained on source labels and adapted to the "
        "target with an adversarial loss and ClassMix self-training.",
    ),
    (
        "DACS",
        "the self-training baseline: g_0 trained further on target images mixed with "
        "source images (ClassMix), with pseudo-labels from its EMA model.",
    ),
    (
        "AdaBN",
        "g_0 with its BatchNorm statistics re-estimated on the unlabeled target "
        "images; no training. Not applicable to a segmenter without BatchNorm layers.",
    ),
    (
        "EMA model",
        "the exponential moving average of a model's weights over its training "
        "steps; CICLD and DACS are scored with it. The CICLD paper calls it the student, "
        "DACS the teacher.",
    ),
    (
        "target oracle",
        "the segmenter trained on target labels; it reads them, so it is a "
        "reference, not an adaptation method.",
    ),
    (
        "floor / ceiling",
        "in the mIoU tables, the source-only row (no adaptation) and the "
        "target-oracle row (target labels) bound what adaptation reaches; in the distance table, "
        "target train images (floor: the target against itself) and untranslated source images "
        "(ceiling).",
    ),
    (
        "SWD x1e3",
        "sliced Wasserstein distance between the distributions of small image "
        "patches of two image sets, times 1000; lower is closer.",
    ),
    (
        "mIoU19 / 16 / 13",
        "mean intersection over union over the 19 Cityscapes classes or "
        "their 16- and 13-class subsets (SYNTHIA); mIoU4 etc.: every class of the dataset.",
    ),
)


def _glossary() -> list[str]:
    items = "".join(
        f"<dt><b>{html.escape(term)}</b></dt><dd>{html.escape(text)}</dd>"
        for term, text in GLOSSARY
    )
    return ["<h2 id='glossary'>Glossary</h2>", f"<dl>{items}</dl>"]


def _read(path: Path):
    return read_json(path) if path.is_file() else None


def _figure(**kw):
    """A matplotlib ``Figure`` outside pyplot: it renders PNGs with its own Agg canvas, so
    the calling process's matplotlib backend is neither needed nor changed."""
    from matplotlib.figure import Figure

    return Figure(**kw)


def _fig_to_png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return buf.getvalue()


def _per_class_plot(names, series: dict[str, dict]) -> bytes:
    fig = _figure(figsize=(max(6, 0.5 * len(names)), 3.2))
    ax = fig.subplots()
    w = 0.8 / len(series)
    x = np.arange(len(names))
    for i, (label, per_class) in enumerate(series.items()):
        vals = [per_class.get(n) if per_class.get(n) is not None else 0.0 for n in names]
        ax.bar(x + (i - (len(series) - 1) / 2) * w, vals, w, label=label)
    ax.set_xticks(x, names, rotation=60, ha="right", fontsize=8)
    ax.set_ylabel("IoU (%)")
    ax.set_ylim(0, 100)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    return _fig_to_png(fig)


def _miou_along_n(domains: list[dict], miou0: float | None, key: str) -> bytes | None:
    pts = [
        (d["n"], d["val_miou"][key]) for d in domains if d.get("val_miou") and key in d["val_miou"]
    ]
    if not pts:
        return None
    if miou0 is not None:
        pts = [(0, miou0), *pts]
    fig = _figure(figsize=(5, 3))
    ax = fig.subplots()
    ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-")
    ax.set_xlabel("domain n (diffusion steps)")
    ax.set_ylabel(f"target mIoU{key} (%)")
    ax.grid(alpha=0.3)
    return _fig_to_png(fig)


def sweep_plot(results: dict, key: str = "19") -> bytes | None:
    """The paper's Fig. 5 from ``diffdass ablate`` results: target mIoU (mean and min-max over
    seeds) against N (``sweep_n: N = v`` rows) and lambda (``sweep_lambda: lambda = v``)."""
    panels = {
        "sweep_n": ("N (largest diffusion depth)", {}),
        "sweep_lambda": ("guidance strength (guidance.scale)", {}),
    }
    for res in results.values():
        for label, v in res.items():
            group, _, name = label.partition(": ")
            if group not in panels or "=" not in name:
                continue
            try:  # "lambda = 0.02 + AdaBN on top" and other variants are not plotted
                x = float(name.split("=", 1)[1])
            except ValueError:
                continue
            panels[group][1].setdefault(x, []).append(float(v))
    panels = {g: p for g, p in panels.items() if p[1]}
    if not panels:
        return None
    fig = _figure(figsize=(4.5 * len(panels), 3))
    axes = fig.subplots(1, len(panels), squeeze=False)
    for ax, (_, (xlabel, pts)) in zip(axes[0], panels.items(), strict=True):
        xs = sorted(pts)
        mean = [float(np.mean(pts[x])) for x in xs]
        ax.plot(xs, mean, "o-")
        ax.fill_between(xs, [min(pts[x]) for x in xs], [max(pts[x]) for x in xs], alpha=0.2)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(f"target mIoU{key} (%)")
        ax.grid(alpha=0.3)
    return _fig_to_png(fig)


def calibration_plot(res: dict) -> bytes:
    """The guidance calibration: label consistency (judge, guide, oracle if any) and the
    distance to the target against the strength, the chosen strength marked."""
    pts = res["points"]
    xs = [p["strength"] for p in pts]
    # strength 0 sits at the left edge of a symlog axis
    fig = _figure(figsize=(9, 3.2))
    ax1, ax2 = fig.subplots(1, 2)
    for key, label, style in (
        ("judge_consistency", "judge (independent, chooses)", "o-"),
        ("guide_consistency", "guide g_0 (its own view)", "s--"),
        ("oracle_consistency", "oracle (evidence only)", "^:"),
    ):
        if all(p.get(key) is not None for p in pts):
            ax1.plot(xs, [p[key] for p in pts], style, label=label)
    ax2.plot(xs, [p["distance"] for p in pts], "o-", color="C3")
    if res.get("tolerance") is not None:
        band = (1 + res["tolerance"]) * pts[0]["distance"]
        ax2.axhline(
            band, color="C3", alpha=0.4, ls=":", label=f"band: +{100 * res['tolerance']:g}%"
        )
        ax2.legend(fontsize=7)
    chosen = res["chosen_strength"]
    for ax in (ax1, ax2):
        ax.set_xscale("symlog", linthresh=min([x for x in xs if x > 0] or [1.0]))
        ax.axvline(chosen, color="k", alpha=0.4, ls="--")
        ax.set_xlabel(f"guidance strength (reduction {res.get('reduction', '')})")
        ax.grid(alpha=0.3)
    ax2.set_xlim(ax1.get_xlim())
    ax1.set_ylabel("label consistency (mIoU %, vs source labels)")
    ax1.legend(fontsize=7)
    ax2.set_ylabel("patch SWD to target (lower = closer)")
    ax1.set_title(f"chosen: {chosen:g} (n = {res['n']})", fontsize=9)
    return _fig_to_png(fig)


def _calibration_section(res: dict, picture: Path) -> list[str]:
    rows = [
        [
            p["strength"],
            p.get("judge_consistency"),
            p.get("guide_consistency"),
            p.get("oracle_consistency"),
            p["distance"],
            p.get("rms_change_vs_unguided"),
        ]
        for p in res["points"]
    ]
    src = res.get("source_consistency", {})
    rows.append(
        [
            "source, untranslated",
            src.get("judge_consistency"),
            src.get("guide_consistency"),
            src.get("oracle_consistency"),
            res.get("source_distance"),
            None,
        ]
    )
    parts = [
        "<h2>Guidance strength (calibration)</h2>",
        f"<p>{res['images']} source images translated at n = {res['n']}, guided by g_0 at each "
        f"strength; chosen: <b>{res['chosen_strength']:g}</b> ({html.escape(res['rule'])}). "
        "Label consistency is judged by an independent source-only model (another seed); the "
        "oracle column reads target labels and is shown as evidence only, never used to "
        "choose.</p>",
        _table(
            [
                "strength",
                "judge consistency",
                "guide consistency",
                "oracle consistency",
                "SWD to target",
                "rms change vs unguided",
            ],
            rows,
        ),
    ]
    if picture.is_file():
        parts.append(_img_tag(picture.read_bytes(), "guidance calibration"))
    sheet = picture.with_name("translations.png")
    if sheet.is_file():
        strengths = ", ".join(f"{p['strength']:g}" for p in res["points"])
        parts += [
            f"<p>Columns: a source image, then its translation at each strength ({strengths}).</p>",
            _img_tag(sheet.read_bytes(), "translations along the strength"),
        ]
    return parts


def _strips(ptl_dir: Path, max_cols: int = 8) -> np.ndarray | None:
    """Rows = source images, columns = domains (n = 0 is the source image itself)."""
    from PIL import Image

    root = ptl_dir / "strips"
    if not root.is_dir():
        return None
    rows = []
    for d in sorted(p for p in root.iterdir() if p.is_dir()):
        files = sorted(d.glob("n*.png"))
        if len(files) > max_cols:
            pick = np.linspace(0, len(files) - 1, max_cols).round().astype(int)
            files = [files[i] for i in sorted(set(pick))]
        rows.append([np.asarray(Image.open(f).convert("RGB")) for f in files])
    if not rows or not rows[0]:
        return None
    h, w = rows[0][0].shape[:2]
    ncol = max(len(r) for r in rows)
    sheet = np.full((len(rows) * (h + 2), ncol * (w + 2), 3), 255, np.uint8)
    for i, r in enumerate(rows):
        for j, im in enumerate(r):
            if im.shape[:2] == (h, w):
                sheet[i * (h + 2) : i * (h + 2) + h, j * (w + 2) : j * (w + 2) + w] = im
    return sheet


def _img_tag(png: bytes, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode()}"/>'


def _table(header: list[str], rows: list[list]) -> str:
    def cell(v):
        if isinstance(v, float):
            return f"{v:.1f}"
        return html.escape("n/a" if v is None else str(v))

    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{cell(v)}</td>" for v in r) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _fmt(v) -> str:
    return "" if v is None else f"{v:.1f}"


def _stage_section(sm: dict, picture: Path) -> list[str]:
    """Every stage measured: distance to target val (and label consistency) along n."""
    rows = [
        ["target train (floor)", _fmt(sm["floor_target_train"]), "", ""],
        [
            "source, untranslated (ceiling)",
            _fmt(sm["ceiling_source"]),
            _fmt(sm.get("source_consistency")),
            _fmt(sm.get("source_judge_consistency")),
        ],
        ["DDPM unconditional samples", _fmt(sm["ddpm_samples"]), "", ""],
    ]
    for r in sm["along_n"]:
        rows.append(
            [
                f"phi^{r['n']} unguided",
                _fmt(r["baseline_distance"]),
                _fmt(r.get("baseline_consistency")),
                _fmt(r.get("baseline_judge_consistency")),
            ]
        )
        if "target_roundtrip_distance" in r:
            rows.append(
                [
                    f"target train, diffused to t={r['n']} and denoised (DDPM check)",
                    _fmt(r["target_roundtrip_distance"]),
                    "",
                    "",
                ]
            )
        if "guided_distance" in r:
            rows.append(
                [
                    f"phi^{r['n']} guided by g_0",
                    _fmt(r["guided_distance"]),
                    _fmt(r.get("guided_consistency")),
                    _fmt(r.get("guided_judge_consistency")),
                ]
            )
    parts = [
        "<h2>Each stage against the target</h2>",
        f"<p>Distance: {html.escape(sm['distance'])}, over {sm['images']} images; lower is closer "
        "to the target. Label consistency: the target oracle's mIoU on the images against the "
        "source labels (higher = the label's semantics were kept); the judge's: the same by an "
        "independent source-only model (when the run calibrated the guidance).</p>",
        _table(
            [
                "images",
                "distance to target val",
                "label consistency, oracle (%)",
                "label consistency, judge (%)",
            ],
            rows,
        ),
    ]
    if picture.is_file():
        parts += [
            "<p>Rows: a source image, its unguided translations at increasing n, the guided "
            "translation at the last n, a target image, a DDPM sample.</p>",
            _img_tag(picture.read_bytes(), "translations"),
        ]
    return parts


def _prediction_panel(out: Path, shorts: dict[str, str], images: int = 4):
    """The panel of :func:`~diffdass.evaluation.panel.build_panel` over the labeled split the
    run scored (its ``config.yaml``) and every model's saved predictions; None when the run
    saved none (``evaluation.save_predictions: 0``) or its split is gone."""
    import yaml

    from diffdass.evaluation.panel import build_panel

    cfg_path = out / "config.yaml"
    if not cfg_path.is_file():
        return None
    val = (yaml.safe_load(cfg_path.read_text(encoding="utf-8")) or {}).get("val") or {}
    cols = [(short, out / name / "eval") for name, short in shorts.items()]
    cols = [(short, ev) for short, ev in cols if (ev / "predictions").is_dir()]
    if not cols or not val.get("root"):
        return None
    try:
        return build_panel(Path(val["root"]), val.get("split", "val"), cols, images, scale=2)
    except FileNotFoundError:
        return None


def write_report(out: str | Path) -> Path:
    """Write ``out/report.html`` and ``out/report/*.png`` from a pipeline directory.

    The rows, their order and labels are the ``methods`` of ``out/summary.json`` (written by
    the pipeline from its method registry); each row's scores are ``out/<key>/eval``."""
    out = Path(out)
    summary = _read(out / "summary.json") or {}
    methods = summary.get("methods") or {}
    evals = {name: _read(out / name / "eval" / "metrics.json") for name in methods}
    evals = {name: ev for name, ev in evals.items() if ev is not None}
    ev0 = evals.get("source_only")
    ptl = _read(out / "ptl" / "metrics.json") or {}
    domains = _read(out / "ptl" / "domains.json") or []
    if ev0 is None:
        raise FileNotFoundError(f"{out}: evaluation metrics missing; run the pipeline first")
    key = summary.get("class_set") or next(iter(ev0["miou"]))
    png_dir = out / "report"
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>diffdass report</title>",
        "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto}"
        "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:3px 8px;"
        "text-align:right}th{background:#eee}img{max-width:100%}</style></head><body>",
        "<h1>diffdass report</h1>",
        f"<p>Output directory: <code>{html.escape(str(out))}</code>. All numbers are for the "
        "<b>last</b> checkpoint of each stage (no model selection on target val). The symbols "
        "and names are explained in the <a href='#glossary'>glossary</a> at the end.</p>",
    ]
    labels = {name: m["label"] for name, m in methods.items()}
    rows = [[labels[name], ev["miou"][key]] for name, ev in evals.items()]
    parts += [f"<h2>Target mIoU{html.escape(key)}</h2>", _table(["model", f"mIoU{key} (%)"], rows)]
    for name, label in labels.items():
        others = {k: v for k, v in evals.get(name, {}).get("miou", {}).items() if k != key}
        if others and methods[name]["role"] != "reference":
            parts.append(
                f"<p>{html.escape(label)}, other class sets: "
                + ", ".join(f"mIoU{k} {v:.1f}" for k, v in others.items())
                + "</p>"
            )
    names = list(ev0["per_class_iou"])
    series = {methods[name]["short"]: ev["per_class_iou"] for name, ev in evals.items()}
    png = _per_class_plot(names, series)
    (png_dir).mkdir(parents=True, exist_ok=True)
    (png_dir / "per_class_iou.png").write_bytes(png)
    prow = [[n, *[series[s].get(n) for s in series]] for n in names]
    parts += [
        "<h2>Per-class IoU</h2>",
        _img_tag(png, "per-class IoU"),
        _table(["class", *series], prow),
    ]
    if "adabn" not in evals:
        parts.append(
            "<p>AdaBN: not applicable, the segmenter has no BatchNorm layer (no statistics to "
            "re-estimate).</p>"
        )
    panel = _prediction_panel(out, {name: methods[name]["short"] for name in evals})
    if panel is not None:
        panel.save(png_dir / "predictions.png")
        parts += [
            "<h2>Predictions side by side</h2>",
            "<p>Target validation images, their labels and each model's prediction.</p>",
            _img_tag((png_dir / "predictions.png").read_bytes(), "predictions"),
        ]
    calib = _read(out / "calibration" / "calibration.json")
    if calib:
        parts += _calibration_section(calib, out / "calibration" / "curve.png")
    sm = _read(out / "stage_metrics" / "stage_metrics.json")
    if sm:
        parts += _stage_section(sm, out / "stage_metrics" / "translations.png")
    curve = _miou_along_n(domains, ev0["miou"].get(key), key)
    if curve:
        (png_dir / "miou_along_n.png").write_bytes(curve)
        parts += ["<h2>mIoU of g_n along n</h2>", _img_tag(curve, "mIoU along n")]
    strip = _strips(out / "ptl")
    if strip is not None:
        save_image(png_dir / "strips.png", strip)
        parts += [
            "<h2>One source image across the intermediate domains (Fig. 4)</h2>",
            "<p>Left: the source image (n = 0); then its guided translation at increasing n.</p>",
            _img_tag((png_dir / "strips.png").read_bytes(), "strips"),
        ]
    if domains:
        drows = [
            [
                d["domain"],
                d["n"],
                d.get("reverse_steps"),
                d["loss"],
                d.get("translate_seconds"),
                d["seconds"],
            ]
            for d in domains
        ]
        parts += [
            "<h2>Domains</h2>",
            f"<p>{len(domains)} domains, translation cost "
            f"{ptl.get('translation_cost_image_steps', 'n/a')} reverse image-steps, guidance "
            f"{html.escape(str(ptl.get('guidance')))}, L_src {'on' if ptl.get('loss_src', True) else 'off'}.</p>",
            _table(
                ["domain", "n", "reverse steps", "fine-tune loss", "translate s", "total s"],
                drows[-20:],
            ),
        ]
    secs = summary.get("seconds", {})
    if secs:
        parts += [
            "<h2>Time per stage</h2>",
            _table(["stage", "seconds"], [[k, float(v)] for k, v in secs.items()]),
        ]
    t4 = summary.get("table4")
    if t4:
        train, ms = t4["model_training_seconds"], t4["inference_ms_per_image"]
        parts += [
            "<h2>Training and inference time (Table 4)</h2>",
            "<p>Training: wall time of the stages that produce each model (g_N needs g_0, "
            "the DDPM and PTL; DACS needs g_0). Inference: forward pass per image, batch 1.</p>",
            _table(
                ["model", "training s", "inference ms/image", f"mIoU{key} (%)"],
                [[labels[m], train[m], ms[m], evals[m]["miou"][key]] for m in train],
            ),
        ]
    parts += _glossary()
    parts.append("</body></html>")
    return atomic_write_text(out / "report.html", "\n".join(parts))
