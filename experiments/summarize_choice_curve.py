"""Merge one run's first-chunk probes (`<name>_s<step>_<look>.json`, written by
experiments/buttons_choice_curve.sh) into a JSON of learning curves, one entry per run name.

    python experiments/summarize_choice_curve.py outputs/exp_human_video_transfer/validation robot_only_6000_s0 \\
        --json benchmarks/results/buttons_choice_curve.json
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

IN_DIST, OOD = ("red", "green"), ("blue", "yellow")


def summarize(validation: Path, name: str) -> list[dict]:
    rows = []
    for f in validation.glob(f"{name}_s*_*.json"):
        m = re.fullmatch(re.escape(name) + r"_s(\d+)_(robot|human)", f.stem)
        if m is None:
            continue
        d = json.loads(f.read_text())
        c = d["colours"]
        row = {"step": int(m[1]), "look": m[2], "first_token_tv": d["first_token"]["mean_tv"], "colours": c}
        for key, group in (("in_dist", IN_DIST), ("ood", OOD)):
            row[key] = {"named": sum(c[k]["named"] for k in group), "probes": sum(c[k]["scenes"] for k in group)}
        rows.append(row)
    if not rows:
        raise SystemExit(f"{validation}: no probe files {name}_s<step>_<robot|human>.json")
    return sorted(rows, key=lambda r: (r["step"], r["look"]))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("validation", type=Path, help="folder of the probe JSON files")
    p.add_argument("name", help="run name (the files' prefix)")
    p.add_argument("--json", type=Path, required=True, help="curves file to update (other runs in it are kept)")
    args = p.parse_args()
    rows = summarize(args.validation, args.name)
    curves = json.loads(args.json.read_text()) if args.json.exists() else {}
    curves[args.name] = {"seed_block": 1, "chance": 0.25, "rows": rows}
    tmp = args.json.with_suffix(".tmp")
    tmp.write_text(json.dumps(curves, indent=1) + "\n")
    tmp.replace(args.json)
    for r in rows:
        print(
            f"{args.name} step {r['step']:5d} {r['look']:5s}: IN {r['in_dist']['named']}/{r['in_dist']['probes']}, "
            f"OOD {r['ood']['named']}/{r['ood']['probes']}, first-token TV {r['first_token_tv']:.2f}"
        )


if __name__ == "__main__":
    main()
