from __future__ import annotations

from clap_vla.configs.sim import RolloutConfig


def run(cfg: RolloutConfig) -> int:
    from clap_vla.sim.rollout import evaluate, format_results

    results = evaluate(cfg)
    print(format_results(results))
    if cfg.out is not None:
        print(f"wrote {cfg.out}")
    return 0
