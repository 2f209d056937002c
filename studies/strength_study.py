"""Tables of the guidance-strength study from a `diffdass ablate` folder (docs/results/).

    diffdass ablate --rows table2,sweep_lambda --only "table2: (a),table2: (b),sweep" \\
        --sweep-lambda 0.02,0.32 --seeds 0,1,2 -o runs/abl_default
    python studies/strength_study.py runs/abl_default

Per seed, the shared run of `diffdass ablate` (``seed<s>/base``) holds the calibration of the
guidance strength (``calibration/calibration.json``: label consistency under the judge, the
guide and the oracle, and the patch SWD to the target, at every strength tried) and the full
method at the chosen strength; the ablation rows hold g_N at the other strengths. Prints:

1. the calibration per seed (chosen strength, share of the consistency unguided translation
   loses that guidance wins back, under the judge and the oracle, and the SWD change);
2. the strength sweep: g_N mIoU, consistency (judge, oracle) and SWD per strength, mean over
   seeds (strength 0 is row (b): PTL on unguided translations);
3. the rows full, (a), (b), AdaBN, source-only and oracle with paired differences; with
   ``--adabn-on-top`` every trained row also with target BatchNorm statistics (AdaBN on top,
   computed once and cached in ``adabn_on_top.json`` of the folder).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from diffdass.pipeline.strength_study import (
    adabn_on_top,
    calibration_table,
    load,
    on_top_table,
    rows_table,
    sweep_table,
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("ablation", type=Path, help="a `diffdass ablate` output folder")
    ap.add_argument("--adabn-on-top", action="store_true", help="also every row + AdaBN")
    args = ap.parse_args()
    results, cals = load(args.ablation)
    print("Calibration per seed\n")
    print(calibration_table(cals))
    print("Strength sweep (mean +- std over seeds)\n")
    print(sweep_table(results, cals))
    print("Rows (target mIoU)\n")
    print(rows_table(results))
    if args.adabn_on_top:
        print("Every row with target BatchNorm statistics (AdaBN on top)\n")
        print(on_top_table(results, adabn_on_top(args.ablation, results)))


if __name__ == "__main__":
    main()
