from __future__ import annotations

import json
from dataclasses import asdict

from clap_vla.configs.data import NormStatsConfig


def run(cfg: NormStatsConfig) -> int:
    from clap_vla.data.dataset import RobotDataset
    from clap_vla.data.windows import WindowConfig, fit_norm_stats

    stats = fit_norm_stats(
        RobotDataset(cfg.path),
        WindowConfig(horizon=cfg.horizon),
        relative=cfg.relative,
        max_windows=cfg.max_windows,
    )
    if cfg.out is not None:
        print(f"wrote {stats.save(cfg.out)}")
    else:
        print(json.dumps(asdict(stats), indent=2))
    return 0
