"""CLAP-NTP training samples: (image at t, instruction, subtask at t, action tokens of a[t:t+H]).

Robot episodes carry their true tokens (the frozen Act-VAE run over their normalised chunks);
action-free videos carry pseudo tokens from a VD-VAE token shard (`clap label`), joined on
(episode, frame). Both kinds mix in one batch with sampling weights (paper §III-D, Algorithm 3).

Images enter as frozen frame-encoder features from the feature cache (Llama builds) or as uint8
pixels from the frame cache (Qwen3-VL, whose vision tower trains). `NTPSource.batch(step, rank,
world)` is a pure function of the step, so resumed runs see the batches the killed run would have.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from clap_vla.data import lerobot_format as lf
from clap_vla.data.dataset import RobotDataset
from clap_vla.data.ntp_text import IGNORE, codes_to_ids, prompt_text, target_text
from clap_vla.errors import ConfigError, DatasetError
from clap_vla.types import NUM_ARMS, NTPBatch


class VisualProvider(Protocol):
    def get(self, rows: np.ndarray, views: np.ndarray) -> torch.Tensor:
        """Global frame rows (N,) -> (N, P, C) float features or (N, 3, h, w) uint8 pixels."""
        ...


class FramePixels:
    """uint8 frames straight from the decoded-frame cache (for backbones that train their own vision)."""

    def __init__(self, ds: RobotDataset, camera: str, progress: bool = True):
        import json

        from clap_vla.data.frame_cache import build_frame_cache

        path = build_frame_cache(ds, camera, progress=progress)
        shape = json.loads(path.with_suffix(".json").read_text())["shape"]
        self.frames = np.memmap(path, dtype=np.uint8, mode="r", shape=tuple(shape))  # (T_total, h, w, 3)

    def get(self, rows: np.ndarray, views: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(self.frames[rows].transpose(0, 3, 1, 2)))


@dataclass
class NTPSet:
    """One dataset's samples of one split."""

    name: str
    kind: str  # "robot" (true tokens) | "video" (pseudo tokens)
    robot_type: str
    rows: np.ndarray  # (N,) int64: global frame row of o_t
    episode: np.ndarray  # (N,) int64
    t: np.ndarray  # (N,) int64
    codes: np.ndarray  # (N, A, Nq) int64; -1 rows for absent arms
    instruction: np.ndarray  # (N,) int64 index into `instructions`
    subtask: np.ndarray  # (N,) int64 index into `subtasks`
    instructions: list[str]
    subtasks: list[str]
    visual: VisualProvider | None = None
    # Robot sets also keep the continuous chunks (CLAP-RF post-training):
    actions: torch.Tensor | None = None  # (N, H, A, D) normalised
    valid: torch.Tensor | None = None  # (N, H) bool
    arm_mask: torch.Tensor | None = None  # (A,) bool
    state: torch.Tensor | None = None  # (N, A, D) float32 raw unified state at t

    def __len__(self) -> int:
        return len(self.rows)

    def select(self, sel: np.ndarray) -> NTPSet:
        def pick(x):
            return None if x is None else x[torch.from_numpy(np.asarray(sel))]

        return NTPSet(
            self.name, self.kind, self.robot_type, self.rows[sel], self.episode[sel], self.t[sel], self.codes[sel],
            self.instruction[sel], self.subtask[sel], self.instructions, self.subtasks, self.visual,
            pick(self.actions), pick(self.valid), self.arm_mask, pick(self.state),
        )  # fmt: skip


def text_columns(ds: RobotDataset, episode: np.ndarray, t: np.ndarray) -> tuple[np.ndarray, np.ndarray, list, list]:
    """Instruction and subtask of each (episode, t): index arrays (N,) and their string lists."""
    instr = np.zeros(len(episode), np.int64)
    sub = np.zeros(len(episode), np.int64)
    tindex: dict[str, int] = {}
    subtasks = list(ds.subtasks) or [""]
    keys = [lf.TASK_INDEX] + ([lf.SUBTASK_INDEX] if lf.SUBTASK_INDEX in ds.features and ds.subtasks else [])
    for ep in np.unique(episode):
        cols = ds.episode_columns(int(ep), keys)
        sel = np.nonzero(episode == ep)[0]
        ts = t[sel]
        for i, ti in zip(sel, ts, strict=True):
            name = ds.task_of(int(cols[lf.TASK_INDEX][ti]))
            instr[i] = tindex.setdefault(name, len(tindex))
        if lf.SUBTASK_INDEX in cols:
            sub[sel] = cols[lf.SUBTASK_INDEX][ts]
    texts = [None] * len(tindex)
    for name, k in tindex.items():
        texts[k] = name
    return instr, sub, texts, subtasks


def unified_states(ds: RobotDataset, episode: np.ndarray, t: np.ndarray) -> torch.Tensor | None:
    """(N, A, D) float32 state at each (episode, t) in the unified arm layout; None without states."""
    from clap_vla.data.action_space import ArmLayout

    if not ds.has_state:
        return None
    layout = ArmLayout.for_dim(ds.dim(lf.STATE), f"{ds.root}: {lf.STATE!r}")
    out = np.zeros((len(episode), NUM_ARMS, 7), np.float32)
    for ep in np.unique(episode):
        sel = np.nonzero(episode == ep)[0]
        out[sel] = layout.to_unified(ds.episode_columns(int(ep), [lf.STATE])[lf.STATE][t[sel]])
    return torch.from_numpy(out)


def _split(episode: np.ndarray, holdout_every: int | None) -> np.ndarray:
    if holdout_every is None:
        return np.zeros(len(episode), bool)
    return episode % holdout_every == holdout_every - 1


def robot_samples(
    path: str | Path, act_vae, normalizer, holdout_every: int | None = 10, batch_size: int = 1024, progress: bool = True
) -> tuple[NTPSet, NTPSet]:
    """(train, held-out) samples of a robot dataset with the Act-VAE's tokens of each chunk."""
    from clap_vla.data.transitions import load_transitions

    ds = RobotDataset(path)
    full, _ = load_transitions(path, act_vae.cfg.horizon, normalizer=normalizer, holdout_every=None, progress=progress)
    codes = []
    dev = next(act_vae.parameters()).device
    for a in range(0, len(full), batch_size):
        acts = full.actions[a : a + batch_size].to(dev)
        codes.append(act_vae.encode(acts, full.arm_mask.to(dev).expand(len(acts), NUM_ARMS)).cpu().numpy())
    instr, sub, texts, subs = text_columns(ds, full.episode, full.t)
    s = NTPSet(
        ds.root.name, "robot", str(ds.info.get("robot_type") or "robot"), full.rows[:, 0], full.episode, full.t,
        np.concatenate(codes), instr, sub, texts, subs, None, full.actions, full.valid, full.arm_mask,
        unified_states(ds, full.episode, full.t),
    )  # fmt: skip
    held = _split(s.episode, holdout_every)
    return s.select(~held), s.select(held)


def video_samples(
    shard: str | Path, act_meta_sha: str | None, num_codes: int, codes_per_arm: int, holdout_every: int | None = 10
) -> tuple[NTPSet, NTPSet]:
    """(train, held-out) samples of the dataset a token shard labels (its meta names the dataset)."""
    from clap_vla.data.tokens import read_token_shard
    from clap_vla.types import ARM_NAMES

    cols, meta = read_token_shard(shard)
    if (meta.get("num_codes"), meta.get("codes_per_arm")) != (num_codes, codes_per_arm):
        raise ConfigError(
            f"{shard}: tokens have K={meta.get('num_codes')}, Nq={meta.get('codes_per_arm')}; the Act-VAE has "
            f"K={num_codes}, Nq={codes_per_arm}"
        )
    shard_sha = (meta.get("act_vae") or {}).get("sha256")
    if act_meta_sha and shard_sha and shard_sha != act_meta_sha:
        raise ConfigError(
            f"{shard}: labelled for the Act-VAE with weights sha256 {shard_sha[:12]}, not the one given "
            f"({act_meta_sha[:12]}); relabel with `clap label` using the same Act-VAE"
        )
    ds_info = meta.get("dataset") or {}
    if "path" not in ds_info:
        raise DatasetError(f"{shard}/meta.json: no dataset path; was it written by `clap label`?")
    ds = RobotDataset(ds_info["path"])
    if ds_info.get("fingerprint") and ds.fingerprint() != ds_info["fingerprint"]:
        raise DatasetError(f"{shard}: {ds.root} changed since it was labelled (fingerprint differs); relabel it")
    # (episode, frame) -> (A, Nq) codes.
    table: dict[tuple[int, int], np.ndarray] = {}
    arm_idx = {a: i for i, a in enumerate(ARM_NAMES)}
    for e, f, a, c in zip(cols["episode_index"], cols["frame_index"], cols["arm"], cols["codes"], strict=True):
        row = table.setdefault((int(e), int(f)), np.full((NUM_ARMS, codes_per_arm), -1, np.int64))
        row[arm_idx[str(a)]] = c
    keys = sorted(table)
    if not keys:
        raise DatasetError(f"{shard}: no token rows")
    episode = np.array([k[0] for k in keys], np.int64)
    t = np.array([k[1] for k in keys], np.int64)
    lengths = np.array([rec.length for rec in ds.episodes])
    if (t >= lengths[episode]).any():
        bad = int(np.nonzero(t >= lengths[episode])[0][0])
        raise DatasetError(f"{shard}: episode {episode[bad]} frame {t[bad]} is past the end of {ds.root}")
    rows = np.asarray(ds.frame_offsets, np.int64)[episode] + t
    instr, sub, texts, subs = text_columns(ds, episode, t)
    s = NTPSet(
        ds.root.name, "video", str(ds.info.get("robot_type") or "human"), rows, episode, t,
        np.stack([table[k] for k in keys]), instr, sub, texts, subs,
    )  # fmt: skip
    held = _split(episode, holdout_every)
    return s.select(~held), s.select(held)


def corpus_texts(sets: list[NTPSet]) -> list[str]:
    """Every distinct prompt and target text of the sets (what a corpus tokenizer is fitted to)."""
    out = set()
    for s in sets:
        out.update(prompt_text(s.robot_type, i) for i in s.instructions)
        out.update(target_text(t) for t in s.subtasks)
    return sorted(out)


class TextTokens:
    """Token ids of prompts and targets, tokenised once per distinct string."""

    def __init__(self, tokenizer, act_offset: int):
        self.tok, self.act_offset = tokenizer, act_offset
        self._cache: dict[str, list[int]] = {}
        self.pad_id = tokenizer.eos_token_id if tokenizer.pad_token_id is None else tokenizer.pad_token_id

    def ids(self, text: str) -> list[int]:
        if text not in self._cache:
            self._cache[text] = list(self.tok(text, add_special_tokens=False).input_ids)
        return self._cache[text]

    def prompt(self, robot: str, instruction: str) -> list[int]:
        return self.ids(prompt_text(robot, instruction))

    def sample(self, robot: str, instruction: str, subtask: str, codes: np.ndarray) -> tuple[list[int], list[int]]:
        """-> (input ids, labels) of one sample: prompt + target, labels IGNORE on the prompt."""
        p = self.prompt(robot, instruction)
        tgt = self.ids(target_text(subtask)) + codes_to_ids(codes, self.act_offset)
        return p + tgt, [IGNORE] * len(p) + tgt


def collate(sets: list[NTPSet], src: np.ndarray, idx: np.ndarray, text: TextTokens) -> NTPBatch:
    """The batch of samples (set src[i], position idx[i]); text right-padded."""
    seqs, labs = [], []
    visual: list[torch.Tensor | None] = [None] * len(src)
    for k in np.unique(src):
        s = sets[int(k)]
        if s.visual is None:
            raise ConfigError(f"{s.name}: no visual provider attached")
        mine = np.nonzero(src == k)[0]
        v = s.visual.get(s.rows[idx[mine]], np.zeros(len(mine), np.int64))
        for j, i in enumerate(mine):
            visual[i] = v[j]
    for k, i in zip(src, idx, strict=True):
        s = sets[int(k)]
        ids, lab = text.sample(s.robot_type, s.instructions[s.instruction[i]], s.subtasks[s.subtask[i]], s.codes[i])
        seqs.append(ids)
        labs.append(lab)
    T = max(len(x) for x in seqs)
    B = len(seqs)
    input_ids = torch.full((B, T), text.pad_id, dtype=torch.long)
    labels = torch.full((B, T), IGNORE, dtype=torch.long)
    mask = torch.zeros(B, T, dtype=torch.long)
    for i, (x, y) in enumerate(zip(seqs, labs, strict=True)):
        input_ids[i, : len(x)] = torch.tensor(x)
        labels[i, : len(y)] = torch.tensor(y)
        mask[i, : len(x)] = 1
    extra = {}
    if all(sets[int(k)].actions is not None for k in np.unique(src)):
        rows = [(sets[int(k)], int(i)) for k, i in zip(src, idx, strict=True)]
        extra = {
            "actions": torch.stack([s.actions[i] for s, i in rows]),
            "action_valid": torch.stack([s.valid[i] for s, i in rows]),
            "arm_mask": torch.stack([s.arm_mask for s, _ in rows]),
        }
        if all(s.state is not None for s, _ in rows):
            extra["state"] = torch.stack([s.state[i] for s, i in rows])
    return NTPBatch(
        visual=torch.stack(visual)[:, None],  # (B, N=1, ...)
        input_ids=input_ids,
        attention_mask=mask,
        labels=labels,
        source=torch.from_numpy(src.astype(np.int64)),
        **extra,
    )


class NTPSource:
    """Mixture of sample sets drawn by weight; batches are a pure function of the step."""

    def __init__(self, sets: list[NTPSet], weights: list[float], batch_size: int, text: TextTokens, seed: int = 0):
        from clap_vla.data.transitions import mixture_probabilities

        self.p = mixture_probabilities(weights, len(sets))
        for s in sets:
            if len(s) == 0:
                raise DatasetError(f"{s.name}: no {s.kind} samples")
        self.sets, self.batch_size, self.text, self.seed = sets, batch_size, text, seed
        self.sizes = np.array([len(s) for s in sets])

    def slots(self, step: int) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng([self.seed, step])
        src = rng.choice(len(self.sets), size=self.batch_size, p=self.p)
        return src, (rng.random(self.batch_size) * self.sizes[src]).astype(np.int64)

    def batch(self, step: int, rank: int = 0, world_size: int = 1) -> NTPBatch:
        if self.batch_size % world_size:
            raise ConfigError(f"batch_size {self.batch_size} is not divisible by world size {world_size}")
        src, idx = self.slots(step)
        mine = slice(rank, None, world_size)
        b = collate(self.sets, src[mine], idx[mine], self.text)
        slot = torch.arange(self.batch_size, dtype=torch.int64)[mine]
        b.sample_seed = (self.seed * 1_000_003 + step) * self.batch_size + slot
        return b


def iterate(s: NTPSet, text: TextTokens, batch_size: int, limit: int | None = None):
    """Samples of one set in order, evenly thinned to `limit` (evaluation): yields (positions, batch)."""
    n = len(s) if limit is None else min(limit, len(s))
    pick = np.arange(len(s)) if n == len(s) else np.linspace(0, len(s) - 1, n).round().astype(np.int64)
    for a in range(0, n, batch_size):
        i = pick[a : a + batch_size]
        yield i, collate([s], np.zeros(len(i), np.int64), i, text)


__all__ = [
    "FramePixels",
    "NTPSet",
    "NTPSource",
    "TextTokens",
    "collate",
    "corpus_texts",
    "iterate",
    "robot_samples",
    "text_columns",
    "video_samples",
]
