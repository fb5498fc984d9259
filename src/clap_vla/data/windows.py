"""Sampling windows: (episode, t) -> action chunk a[t:t+H] with pad mask, frame pair (o_t, o_{t+H}).

Conventions (docs/conventions.md):
- every t of every episode is a sample (optionally every `stride`-th);
- past the episode end the chunk repeats the last action and `action_valid` is False there;
- the second frame index is min(t + H, T - 1): clamped at the episode's last frame;
- actions and state are mapped into the unified (A=2, D=7) layout with an arm mask, then, when an
  ActionNormalizer is given, made chunk-relative and scaled to [-1, 1].
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from clap_vla.data import lerobot_format as lf
from clap_vla.data.action_space import ArmLayout
from clap_vla.data.dataset import RobotDataset
from clap_vla.data.normalize import ActionNormalizer, NormStats, compute_norm_stats
from clap_vla.errors import ConfigError, DatasetError
from clap_vla.types import ARM_DIM, DEFAULT_HORIZON, NUM_ARMS, Window


@dataclass(frozen=True)
class WindowConfig:
    horizon: int = DEFAULT_HORIZON
    """H: steps per action chunk and the frame gap between o_t and o_{t+H}."""
    cameras: tuple[str, ...] | None = None
    """Cameras to decode (short or full keys); None = all, () = none (actions only, fast)."""
    stride: int = 1
    """Take every stride-th t as a sample start."""
    min_episode_length: int = 1
    """Episodes shorter than this are an error naming the episode (a sanity gate on the data)."""
    arms: tuple[str, ...] | None = None
    """Unified arm slots that the dataset's action/state fill; None = right for 7-D, [left, right] for 14-D."""

    def __post_init__(self) -> None:
        if self.horizon < 1:
            raise ConfigError(f"horizon must be >= 1, got {self.horizon}")
        if self.stride < 1:
            raise ConfigError(f"stride must be >= 1, got {self.stride}")
        if self.min_episode_length < 1:
            raise ConfigError(f"min_episode_length must be >= 1, got {self.min_episode_length}")


class WindowDataset(Dataset):
    """torch Dataset of `Window`s over one RobotDataset; use `collate_windows` to batch."""

    def __init__(
        self,
        ds: RobotDataset | str | Path,
        config: WindowConfig | None = None,
        normalizer: ActionNormalizer | None = None,
    ):
        self.ds = ds if isinstance(ds, RobotDataset) else RobotDataset(ds)
        self.cfg = config or WindowConfig()
        self.normalizer = normalizer
        H = self.cfg.horizon
        self.cameras = (
            list(self.ds.cameras) if self.cfg.cameras is None else [self.ds.camera_key(c) for c in self.cfg.cameras]
        )
        self.layout: ArmLayout | None = None
        if self.ds.has_action:
            where = f"{self.ds.root}: feature {lf.ACTION!r}"
            self.layout = (
                ArmLayout(self.cfg.arms) if self.cfg.arms else ArmLayout.for_dim(self.ds.dim(lf.ACTION), where)
            )
            if self.layout.flat_dim != self.ds.dim(lf.ACTION):
                raise ConfigError(f"{where}: {self.ds.dim(lf.ACTION)} values do not fit arms {self.layout.arms}")
            if self.ds.has_state and self.ds.dim(lf.STATE) != self.layout.flat_dim:
                raise DatasetError(
                    f"{self.ds.root}: {lf.STATE!r} has {self.ds.dim(lf.STATE)} values but {lf.ACTION!r} has "
                    f"{self.layout.flat_dim}; both must use the per-arm 7-D layout"
                )
        if normalizer is not None:
            if self.layout is None:
                raise ConfigError(f"{self.ds.root}: dataset has no actions to normalise")
            if normalizer.stats.relative and not self.ds.has_state:
                raise DatasetError(f"{self.ds.root}: relative actions need {lf.STATE!r}, which this dataset lacks")
            if tuple(normalizer.stats.arms) != self.layout.arms:
                raise ConfigError(f"norm stats are for arms {normalizer.stats.arms}, dataset has {self.layout.arms}")
            if normalizer.stats.horizon != H:
                raise ConfigError(f"norm stats were computed for horizon {normalizer.stats.horizon}, windows use {H}")
        starts = []
        for rec in self.ds.episodes:
            if rec.length < self.cfg.min_episode_length:
                raise DatasetError(
                    f"{self.ds.root}: episode {rec.index} has {rec.length} frames, shorter than the "
                    f"requested minimum of {self.cfg.min_episode_length}"
                )
            t = np.arange(0, rec.length, self.cfg.stride)
            starts.append(np.stack([np.full_like(t, rec.index), t], 1))
        self.index = np.concatenate(starts) if starts else np.zeros((0, 2), np.int64)  # (N, 2): episode, t
        self._numeric = [k for k in (lf.ACTION, lf.STATE) if k in self.ds.features] + [lf.TASK_INDEX]
        if lf.SUBTASK_INDEX in self.ds.features:
            self._numeric.append(lf.SUBTASK_INDEX)

    def __len__(self) -> int:
        return len(self.index)

    def chunk(self, ep: int, t: int) -> tuple[np.ndarray | None, np.ndarray, np.ndarray | None, dict]:
        """Raw unified chunk (H, A, D), validity (H,), state (A, D) and the episode's columns."""
        cols = self.ds.episode_columns(ep, self._numeric)
        T, H = len(cols[lf.TASK_INDEX]), self.cfg.horizon
        steps = np.arange(t, t + H)
        valid = steps < T
        idx = np.minimum(steps, T - 1)  # past the end: repeat the last action (masked)
        actions = state = None
        if self.layout is not None:
            actions = self.layout.to_unified(cols[lf.ACTION][idx])
            if lf.STATE in cols:
                state = self.layout.to_unified(cols[lf.STATE][t])
        return actions, valid, state, cols

    def raw_chunks(
        self, which: np.ndarray | None = None, progress: bool = False
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """The windows `which` (indices into `self.index`; default all) as arrays, in that order: raw
        unified chunks (N, H, A, D), validity (N, H) and start states (N, A, D) (None without
        `observation.state`). The same values as `chunk` per window, read once per episode."""
        from tqdm import tqdm

        if self.layout is None:
            raise DatasetError(f"{self.ds.root}: action-free dataset; there are no action chunks")
        which = np.arange(len(self)) if which is None else np.asarray(which, dtype=np.int64)
        H, N = self.cfg.horizon, len(which)
        ep, t = self.index[which, 0], self.index[which, 1]
        order = np.argsort(ep, kind="stable")
        bounds = np.flatnonzero(np.diff(ep[order])) + 1
        has_state = lf.STATE in self._numeric
        keys = [lf.ACTION, lf.STATE] if has_state else [lf.ACTION]
        valid = np.zeros((N, H), dtype=bool)
        actions = state = None  # allocated in the dataset's dtype at the first episode
        groups = np.split(order, bounds) if N else []
        for sel in tqdm(groups, desc=f"chunks {self.ds.root.name}", unit="ep", disable=not progress, leave=False):
            cols = self.ds.episode_columns(int(ep[sel[0]]), keys)
            T = len(cols[lf.ACTION])
            steps = t[sel, None] + np.arange(H)  # (n, H); past the end: the last action, masked
            valid[sel] = steps < T
            a = self.layout.to_unified(cols[lf.ACTION][np.minimum(steps, T - 1)])
            if actions is None:
                actions = np.zeros((N, H, NUM_ARMS, ARM_DIM), dtype=a.dtype)
                state = np.zeros((N, NUM_ARMS, ARM_DIM), dtype=a.dtype) if has_state else None
            actions[sel] = a
            if state is not None:
                state[sel] = self.layout.to_unified(cols[lf.STATE][t[sel]])
        if actions is None:
            actions = np.zeros((0, H, NUM_ARMS, ARM_DIM), dtype=np.float32)
            state = np.zeros((0, NUM_ARMS, ARM_DIM), dtype=np.float32) if has_state else None
        return actions, valid, state

    def action_chunks(self, which: np.ndarray | None = None, progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """`raw_chunks`, normalised with this dataset's normalizer when it has one: float32 chunks
        (N, H, A, D), exactly the `actions` of `self[i]` for i in `which`, and validity (N, H)."""
        actions, valid, state = self.raw_chunks(which, progress)
        if self.normalizer is not None:
            actions = self.normalizer.normalize(actions, state)
        return np.asarray(actions, dtype=np.float32), valid

    def __getitem__(self, i: int) -> Window:
        ep, t = (int(v) for v in self.index[i])
        actions, valid, state, cols = self.chunk(ep, t)
        T, H = len(cols[lf.TASK_INDEX]), self.cfg.horizon
        if actions is not None and self.normalizer is not None:
            actions = self.normalizer.normalize(actions, state)
        frames = {}
        pair = [t, min(t + H, T - 1)]
        for cam in self.cameras:
            f = self.ds.frames(ep, cam, pair)  # (F, h, w, C)
            frames[cam] = torch.from_numpy(np.ascontiguousarray(f.transpose(0, 3, 1, 2)))  # (F, C, h, w)
        sub = ""
        if lf.SUBTASK_INDEX in cols and self.ds.subtasks:
            sub = self.ds.subtasks[int(cols[lf.SUBTASK_INDEX][t])]
        return Window(
            episode_index=ep,
            frame_index=t,
            instruction=self.ds.task_of(int(cols[lf.TASK_INDEX][t])),
            subtask=sub,
            action_valid=torch.from_numpy(valid),
            arm_mask=torch.from_numpy(self.layout.arm_mask if self.layout else np.zeros(2, bool)),
            frames=frames,
            actions=None if actions is None else torch.from_numpy(np.asarray(actions, dtype=np.float32)),
            state=None if state is None else torch.from_numpy(np.asarray(state, dtype=np.float32)),
            dataset=str(self.ds.root),
        )


def fit_norm_stats(
    ds: RobotDataset,
    config: WindowConfig | None = None,
    *,
    relative: bool = True,
    max_windows: int = 20000,
    seed: int = 0,
) -> NormStats:
    """Normalisation stats of (chunk-relative) action chunks over up to `max_windows` windows."""
    from clap_vla.data.action_space import chunk_to_relative

    cfg = config or WindowConfig()
    wd = WindowDataset(ds, WindowConfig(horizon=cfg.horizon, cameras=(), stride=cfg.stride, arms=cfg.arms))
    if wd.layout is None:
        raise DatasetError(f"{ds.root}: action-free dataset; there are no actions to compute stats for")
    if relative and not ds.has_state:
        raise DatasetError(f"{ds.root}: relative actions need {lf.STATE!r}, which this dataset lacks")
    rng = np.random.default_rng(seed)
    pick = np.arange(len(wd)) if len(wd) <= max_windows else np.sort(rng.choice(len(wd), max_windows, replace=False))
    chunks, valid, state = wd.raw_chunks(pick)
    if relative:
        chunks = chunk_to_relative(chunks, state)
    return compute_norm_stats(chunks, valid, wd.layout, relative=relative, horizon=cfg.horizon)
