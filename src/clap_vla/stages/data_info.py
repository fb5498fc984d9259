from __future__ import annotations

import json

from clap_vla.configs.data import InfoConfig


def run(cfg: InfoConfig) -> int:
    from clap_vla.data.dataset import RobotDataset
    from clap_vla.data.inspect import format_summary, summarize

    summary = summarize(RobotDataset(cfg.path))
    print(json.dumps(summary, indent=2) if cfg.json else format_summary(summary))
    return 0
