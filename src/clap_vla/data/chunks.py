"""Normalised action chunks from one or more robot datasets, held in memory (Act-VAE training).

Every (episode, t) window of every dataset becomes one chunk (H, A, D), made chunk-relative and
normalised with that dataset's own q01/q99 stats (reference facts: "pose dims scaled per robot");
single- and dual-arm datasets mix, each chunk carrying its arm mask. Episodes are split
deterministically: every `holdout_every`-th episode of each dataset is held out for evaluation.

`ChunkSource.batch(step, rank, world)` is a pure function of the step, so resumed runs see exactly
the batches the original run would have seen.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from clap_vla.data.dataset import RobotDataset
from clap_vla.data.normalize import ActionNormalizer, NormStats
from clap_vla.data.windows import WindowConfig, WindowDataset, fit_norm_stats
from clap_vla.errors import ConfigError, DatasetError, holdout_hint
from clap_vla.types import ChunkBatch


@dataclass
class ChunkTensors:
    actions: torch.Tensor  # (N, H, A, D) float32
    valid: torch.Tensor  # (N, H) bool
    arm_mask: torch.Tensor  # (N, A) bool
    dataset: torch.Tensor  # (N,) int64: which input dataset

    def __len__(self) -> int:
        return int(self.actions.shape[0])

    def batch(self, idx: torch.Tensor) -> ChunkBatch:
        return ChunkBatch(actions=self.actions[idx], action_valid=self.valid[idx], arm_mask=self.arm_mask[idx])


def load_chunks(
    paths: list[str | Path],
    horizon: int,
    *,
    holdout_every: int = 10,
    stats: list[NormStats] | None = None,
    progress: bool = True,
) -> tuple[ChunkTensors, ChunkTensors, list[NormStats]]:
    """(train, held-out, per-dataset stats). Stats are fitted here unless given (e.g. from an
    artifact, for evaluation)."""
    if holdout_every < 2:
        raise ConfigError(f"holdout_every must be >= 2, got {holdout_every}")
    parts: dict[bool, list[tuple]] = {False: [], True: []}
    fitted: list[NormStats] = []
    for k, path in enumerate(paths):
        ds = RobotDataset(path)
        if not ds.has_action:
            raise DatasetError(f"{ds.root}: action-free dataset; the Act-VAE trains on robot actions")
        wcfg = WindowConfig(horizon=horizon, cameras=())
        st = stats[k] if stats is not None else fit_norm_stats(ds, wcfg)
        if st.horizon != horizon:
            raise ConfigError(f"{ds.root}: norm stats are for horizon {st.horizon}, the model uses {horizon}")
        fitted.append(st)
        wd = WindowDataset(ds, wcfg, ActionNormalizer(st))
        actions, valid = wd.action_chunks(progress=progress)
        is_held = wd.index[:, 0] % holdout_every == holdout_every - 1
        mask = torch.from_numpy(wd.layout.arm_mask)
        for held in (False, True):
            sel = np.flatnonzero(is_held == held)
            if len(sel):
                parts[held].append(
                    (
                        torch.from_numpy(actions[sel]),
                        torch.from_numpy(valid[sel]),
                        mask.expand(len(sel), -1).clone(),
                        torch.full((len(sel),), k, dtype=torch.long),
                    )
                )
    out = []
    for held in (False, True):
        if not parts[held]:
            raise DatasetError(
                f"{[str(p) for p in paths]}: no {'held-out' if held else 'training'} episodes "
                f"(every {holdout_every}th episode is held out; need at least {holdout_every} episodes). "
                + holdout_hint(holdout_every)
            )
        cols = [torch.cat(c) for c in zip(*parts[held], strict=True)]
        out.append(ChunkTensors(*cols))
    return out[0], out[1], fitted


class ChunkSource:
    """Shuffled batches by step: epoch e uses permutation randperm(N, seed + e)."""

    def __init__(self, chunks: ChunkTensors, batch_size: int, seed: int = 0):
        if len(chunks) == 0:
            raise DatasetError("no chunks to train on")
        self.chunks, self.batch_size, self.seed = chunks, batch_size, seed
        self._perm: tuple[int, torch.Tensor] | None = None

    def indices(self, step: int) -> torch.Tensor:
        n, b = len(self.chunks), self.batch_size
        if n < b:  # fewer chunks than a batch: sample with replacement
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + step)
            return torch.randint(0, n, (b,), generator=g)
        per_epoch = n // b
        epoch, i = divmod(step, per_epoch)
        if self._perm is None or self._perm[0] != epoch:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._perm = (epoch, torch.randperm(n, generator=g))
        return self._perm[1][i * b : (i + 1) * b]

    def batch(self, step: int, rank: int = 0, world_size: int = 1) -> ChunkBatch:
        if self.batch_size % world_size:
            raise ConfigError(f"batch_size {self.batch_size} is not divisible by world size {world_size}")
        return self.chunks.batch(self.indices(step)[rank::world_size])


def iterate(chunks: ChunkTensors, batch_size: int):
    """Every chunk once, in order (evaluation)."""
    for i in range(0, len(chunks), batch_size):
        yield chunks.batch(torch.arange(i, min(i + batch_size, len(chunks))))


__all__ = ["ChunkSource", "ChunkTensors", "iterate", "load_chunks"]
