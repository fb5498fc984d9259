from __future__ import annotations

import sys

from clap_vla.configs.data import ValidateConfig


def run(cfg: ValidateConfig) -> int:
    from clap_vla.data.inspect import validate

    problems = validate(cfg.path, check_videos=cfg.videos, max_problems=cfg.max_problems)
    if problems:
        print(f"{cfg.path}: {len(problems)} problem(s)", file=sys.stderr)
        for p in problems:
            print(f"  - {p}", file=sys.stderr)
        return 1
    print(f"{cfg.path}: OK")
    return 0
