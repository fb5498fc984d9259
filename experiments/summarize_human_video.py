"""Summarise experiments/human_video_transfer.sh: closed-loop success on the OOD and in-distribution
colours per policy (95% Wilson intervals, episode counts), Table III's failure modes, and the
VD-VAE's reading of the human domain; writes the benchmark JSON and a markdown table.

    python experiments/summarize_human_video.py --out outputs/exp_human_video_transfer \
        --in-dist red,green --ood blue,yellow --json benchmarks/results/human_video_transfer.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from clap_vla.sim.buttons import resolve_tasks
from clap_vla.sim.rollout import wilson_interval

# row name -> evaluation files (one per training seed)
POLICIES = {
    "robot_only": ["robot_only_s0", "robot_only_s1"],
    "videos_siglip": ["videos_siglip_s0", "videos_siglip_s1"],
    "videos_no_contrastive": ["videos_no_contrastive_s0"],
    "rf_km_before_videos": ["rf_km_before_videos"],
    "rf_km_after_videos": ["rf_km_after_videos"],
    "oracle_labels": ["oracle_labels_s0"],  # diagnostic upper bound: the videos' true actions (not CLAP)
}
DIAGNOSTIC = {"oracle_labels"}


def _pool(results: list[dict], tasks: list[str]) -> dict:
    wins = sum(r["tasks"][t]["successes"] for r in results for t in tasks)
    n = sum(r["tasks"][t]["episodes"] for r in results for t in tasks)
    failures: dict[str, int] = {}
    for r in results:
        for t in tasks:
            for mode, k in r["tasks"][t].get("failures", {}).items():
                failures[mode] = failures.get(mode, 0) + k
    lo, hi = wilson_interval(wins, n)
    return {"successes": wins, "episodes": n, "rate": wins / n if n else 0.0, "wilson95": [lo, hi],
            "failures": failures}  # fmt: skip


def _vd_vae(path: Path) -> dict | None:
    if not path.exists():
        return None
    d = json.loads(path.read_text())
    out = {}
    for ds in d["datasets"]:
        m = ds["vd_vae"]
        key = "robot" if ds["kind"] == "robot" else "human"
        out[f"{key}_psnr_db"] = m["psnr"]
        out[f"{key}_token_acc"] = m["token_acc"]
        for extra in ("codes_read", "codes_true"):
            if extra in m:
                out[f"{key}_{extra}"] = m[extra]
    return out


def summarize(out: Path, in_dist: list[str], ood: list[str]) -> dict:
    rows = []
    for policy, files in POLICIES.items():
        results = [
            json.loads((out / "eval" / f"{f}.json").read_text()) for f in files if (out / "eval" / f"{f}.json").exists()
        ]
        if not results:
            continue
        o, i = _pool(results, ood), _pool(results, in_dist)
        row = {"policy": policy, "ood": {k: o[k] for k in ("successes", "episodes", "rate", "wilson95")},
               "in_dist": {k: i[k] for k in ("successes", "episodes", "rate", "wilson95")},
               "failures": {"wrong_target": o["failures"].get("wrong_target", 0),
                            "execution": o["failures"].get("execution", 0)},
               "failures_in_dist": {"wrong_target": i["failures"].get("wrong_target", 0),
                                    "execution": i["failures"].get("execution", 0)},
               "runs": [f for f in files if (out / "eval" / f"{f}.json").exists()],
               "diagnostic": policy in DIAGNOSTIC}  # fmt: skip
        if len(results) > 1:
            row["per_seed"] = [
                {"run": f, "ood": _pool([r], ood)["successes"], "in_dist": _pool([r], in_dist)["successes"],
                 "episodes_per_set": _pool([r], ood)["episodes"]}
                for f, r in zip(row["runs"], results, strict=True)
            ]  # fmt: skip
        rows.append(row)
    vd = _vd_vae(out / "vd_vae_siglip" / "eval" / "eval.json") or {}
    nocon = _vd_vae(out / "vd_vae_no_contrastive" / "eval" / "eval.json")
    if nocon:
        vd["no_contrastive"] = nocon
    return {"testbed": "buttons", "in_dist": in_dist, "ood": ood, "rows": rows, "vd_vae": vd}


def markdown(s: dict) -> str:
    def cell(d):
        lo, hi = d["wilson95"]
        return f"{d['rate']:.0%} [{lo:.0%}, {hi:.0%}] ({d['successes']}/{d['episodes']})"

    lines = ["| policy | OOD success | in-distribution success | OOD failures: wrong target / execution |",
             "|---|---|---|---|"]  # fmt: skip
    for r in s["rows"]:
        f = r["failures"]
        name = f"{r['policy']} (diagnostic)" if r.get("diagnostic") else r["policy"]
        lines.append(f"| {name} | {cell(r['ood'])} | {cell(r['in_dist'])} | {f['wrong_target']} / {f['execution']} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--in-dist", required=True)
    ap.add_argument("--ood", required=True)
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    s = summarize(a.out, resolve_tasks(a.in_dist), resolve_tasks(a.ood))
    table = markdown(s)
    (a.out / "summary.md").write_text(table)
    print(table)
    print(json.dumps(s["vd_vae"], indent=1))
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps(s, indent=2) + "\n")


if __name__ == "__main__":
    main()
