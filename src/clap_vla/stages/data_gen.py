from __future__ import annotations

from clap_vla.configs.sim import GenConfig


def run(cfg: GenConfig) -> int:
    from clap_vla.sim.generate import generate

    summary = generate(cfg)
    total = sum(summary["episodes"].values())
    print(f"wrote {total} episodes of {len(summary['episodes'])} task(s) to {summary['out']}")
    rates = summary["expert_success_rate"]
    if rates:
        low = {t: r for t, r in rates.items() if r < 1.0}
        if low:
            print("expert success while generating: " + ", ".join(f"{t} {r:.0%}" for t, r in low.items()))
    return 0
