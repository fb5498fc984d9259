from __future__ import annotations

from clap_vla.configs.data import ImportVideosConfig


def run(cfg: ImportVideosConfig) -> int:
    from clap_vla.data.import_videos import import_videos

    size = (cfg.height, cfg.width) if cfg.height is not None and cfg.width is not None else None
    out = import_videos(
        cfg.src,
        cfg.out,
        fps=cfg.fps,
        instructions=cfg.instructions,
        camera=cfg.camera,
        size=size,
        codec=cfg.codec,
        overwrite=cfg.overwrite,
    )
    print(f"wrote action-free dataset {out}")
    return 0
