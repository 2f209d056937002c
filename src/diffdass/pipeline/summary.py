"""The printed summary of a finished run: what it demonstrates, in lines (``diffdass run``,
``diffdass calibrate-guidance``)."""

from __future__ import annotations

from diffdass.adaptation.calibration import won_back
from diffdass.pipeline.methods import BY_KEY, display_order


def calibration_lines(res: dict) -> list[str]:
    """The calibration sweep as printed lines: one per strength, then the choice."""
    has_oracle = all(p.get("oracle_consistency") is not None for p in res["points"])
    head = f"guidance strength at n={res['n']} ({res['images']} source images):"
    lines = [head, "  strength  judge  guide" + ("  oracle" if has_oracle else "") + "    SWD"]
    for p in res["points"]:
        mark = "  <- chosen" if p["strength"] == res["chosen_strength"] else ""
        orc = f"  {p['oracle_consistency']:6.1f}" if has_oracle else ""
        lines.append(
            f"  {p['strength']:8g}  {p['judge_consistency']:5.1f}  {p['guide_consistency']:5.1f}"
            f"{orc}  {p['distance']:5.0f}{mark}"
        )
    src = res["source_consistency"]
    lines.append(
        f"  (untranslated source: judge {src['judge_consistency']:.1f}, SWD "
        f"{res['source_distance']:.0f})"
    )
    for judge in ("judge", "oracle"):
        share = won_back(res, judge)
        if share is not None:
            lines.append(
                f"  at the chosen strength guidance wins back {100 * share:.0f}% of the label "
                f"consistency unguided translation loses ({judge})"
            )
    return lines


#: the oracle is too weak to judge adaptation when it is less than this many points above
#: source-only (about twice the seed-to-seed spread of a source-only mIoU on the benchmark)
#: or when at least this share of the classes present in the target split score under 1 IoU
WEAK_ORACLE_GAP = 2.0
WEAK_ORACLE_ZERO_SHARE = 0.25


def weak_oracle_line(summary: dict) -> str | None:
    """One line when the target oracle cannot learn the target well enough for adaptation
    numbers to mean anything (None otherwise), with its per-class IoU."""
    m, per = summary["miou"], summary.get("oracle_per_class_iou")
    if "oracle" not in m or not per:
        return None
    present = {k: v for k, v in per.items() if v is not None}
    zero = [k for k, v in present.items() if v < 1.0]
    gap = m["oracle"] - m["source_only"]
    if gap >= WEAK_ORACLE_GAP and len(zero) < WEAK_ORACLE_ZERO_SHARE * max(len(present), 1):
        return None
    why = []
    if gap < WEAK_ORACLE_GAP:
        why.append(f"only {gap:+.1f} above source-only")
    if zero:
        why.append(f"{len(zero)} of {len(present)} classes under 1 IoU")
    ious = ", ".join(f"{k} {v:.0f}" for k, v in present.items())
    return (
        f"warning: the target oracle is weak here ({'; '.join(why)}): the adaptation numbers "
        "rest on the classes it learns; the segmenter recipe cannot learn the others at this "
        f"budget (docs/segmenters.md). Oracle IoU: {ious}"
    )


#: the DDPM check passes when target images round-tripped through t = N come back within this
#: share of the source's excess distance above the floor (docs/translation.md)
DDPM_CHECK_SHARE = 0.25


def summary_lines(summary: dict) -> list[str]:
    """What a finished run demonstrates, in a few lines: every row on the same target split."""
    m, cs = summary["miou"], summary["class_set"]
    lines = [f"target mIoU{cs} on the labeled target split (last checkpoints, no model selection):"]
    keys = display_order(m)
    width = max(len(BY_KEY[key].label) for key in keys)
    for key in keys:
        lines.append(f"  {BY_KEY[key].label:<{width}} {m[key]:5.1f}")
    compared = [k for k in keys if BY_KEY[k].role == "adaptation"]
    gap = m["oracle"] - m["source_only"] if "oracle" in m else 0.0
    if gap > 0:
        for key in compared:
            closed = 100 * (m[key] - m["source_only"]) / gap
            lines.append(
                f"  {BY_KEY[key].short} closes {closed:.0f}% of the source-only -> oracle gap"
            )
    if "adabn" in m:
        for key in [k for k in keys if BY_KEY[k].role in ("adaptation", "variant")]:
            method, d = BY_KEY[key], m[key] - m["adabn"]
            verdict = "above" if d > 0 else "not above"
            note = method.versus_adabn or f"{method.short} is {verdict} the AdaBN baseline here"
            lines.append(f"  {method.symbol} - AdaBN: {d:+.1f} ({note})")
    weak = weak_oracle_line(summary)
    if weak:
        lines.append(weak)
    if {"cicld", "dacs"} <= m.keys():
        d = m["cicld"] - m["dacs"]
        lines.append(
            f"  CICLD - DACS: {d:+.1f} (the diffusion segmenter against the same self-training"
            " without diffusion)"
        )
    if summary.get("cicld_noise_probe") is not None:
        cond = summary.get("cicld_condition_probe")
        lines.append(
            f"  CICLD probes: {100 * summary['cicld_noise_probe']:.0f}% of pixels change when the"
            " denoised latent is replaced by noise"
            + (
                f", {100 * cond:.1f}% when the ground-truth label conditions the denoiser"
                if cond is not None
                else ""
            )
        )
    cal = summary.get("calibration")
    if cal:
        shares = ", ".join(
            f"{100 * cal[f'won_back_{j}']:.0f}% ({j})"
            for j in ("judge", "oracle")
            if cal.get(f"won_back_{j}") is not None
        )
        lines.append(
            f"guidance strength {cal['chosen_strength']:g} (calibrated without target labels)"
            + (
                f": wins back {shares} of the label consistency unguided translation loses"
                if shares
                else ""
            )
        )
    sm = summary.get("stage_metrics")
    if sm and sm.get("along_n"):
        last = sm["along_n"][-1]
        moved = last.get("guided_distance", last["baseline_distance"])
        src, floor = sm["ceiling_source"], sm["floor_target_train"]
        lines.append(
            f"distance to target (patch SWD, lower = closer): source {src:.0f}, "
            f"translated at n={last['n']} {moved:.0f}, "
            f"DDPM samples {sm['ddpm_samples']:.0f}, target train {floor:.0f}"
        )
        if src > floor:
            lines.append(
                f"  the translations cover {100 * (src - moved) / (src - floor):.0f}% of the way"
                " from the source to the target"
                + (
                    "; the DDPM's samples are further from the target than the source is"
                    if sm["ddpm_samples"] > src
                    else ""
                )
            )
        back = last.get("target_roundtrip_distance")
        if back is not None and src > floor:
            share = (back - floor) / (src - floor)
            lines.append(
                f"  DDPM check: target images diffused to t={last['n']} and denoised: {back:.0f}"
                f" ({100 * share:.0f}% of the source's distance above the floor): "
                + (
                    "the DDPM is accurate at the depths translation uses"
                    if share <= DDPM_CHECK_SHARE
                    else "the DDPM is not accurate at the depths translation uses (train it longer)"
                )
            )
        elif sm["ddpm_samples"] > src:
            lines.append("  (train the DDPM longer)")
    secs = summary.get("seconds") or {}
    if secs:
        lines.append(f"time: {sum(secs.values()) / 60:.1f} min over {len(secs)} stages")
    return lines
