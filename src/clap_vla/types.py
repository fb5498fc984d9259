"""Dimension glossary, typed batches shared by every stage, and the policy contract.

Shape comments in the code base use these letters:

    B   batch
    T   frames of one episode
    H   chunk horizon: steps in an action chunk, and the gap between o_t and o_{t+H} (default 32)
    A   arms in the unified layout (always 2: index 0 = left, 1 = right; paper §III-A)
    D   per-arm action dimension (7: x, y, z, roll, pitch, yaw, gripper)
    F   frames in a frame pair (2: o_t and o_{t+H})
    C   image channels (3, RGB)
    h w image height and width in pixels
    Nq  codes per arm in a token sequence;  K  codebook size
    P   patches per frame;  V  vocabulary size;  L  layers

Torch is imported lazily so that `import clap_vla.types` stays cheap.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    import numpy as np
    import torch

NUM_ARMS = 2
ARM_NAMES = ("left", "right")
ARM_DIM = 7
POSE_DIM = 6  # x, y, z, roll, pitch, yaw; index 6 is the gripper
GRIPPER_INDEX = 6
ACTION_DIM_NAMES = ("x", "y", "z", "roll", "pitch", "yaw", "gripper")
DEFAULT_HORIZON = 32


@dataclass
class Window:
    """One training sample at (episode, t): the chunk a[t:t+H] and the frame pair (o_t, o_{t+H})."""

    episode_index: int
    frame_index: int  # t, within the episode
    instruction: str
    subtask: str
    action_valid: torch.Tensor  # (H,) bool: False where the chunk ran past the episode end
    arm_mask: torch.Tensor  # (A,) bool: arms this robot has
    frames: dict[str, torch.Tensor] = field(default_factory=dict)  # camera -> (F, C, h, w) uint8
    actions: torch.Tensor | None = None  # (H, A, D) float32; None for action-free video
    state: torch.Tensor | None = None  # (A, D) float32, state at t in the unified layout
    dataset: str = ""  # the dataset's root path, for mixtures and error messages


@dataclass
class WindowBatch:
    """A collated batch of windows; tensors gain a leading B."""

    episode_index: torch.Tensor  # (B,) int64
    frame_index: torch.Tensor  # (B,) int64
    instruction: list[str]
    subtask: list[str]
    action_valid: torch.Tensor  # (B, H) bool
    arm_mask: torch.Tensor  # (B, A) bool
    frames: dict[str, torch.Tensor]  # camera -> (B, F, C, h, w) uint8
    actions: torch.Tensor | None  # (B, H, A, D) float32
    has_action: torch.Tensor  # (B,) bool: False for action-free samples (zeros in `actions`)
    state: torch.Tensor | None  # (B, A, D)
    dataset: list[str]

    def __len__(self) -> int:
        return len(self.instruction)


def collate_windows(samples: list[Window]) -> WindowBatch:
    """Stack windows into a batch. Action-free samples mixed with robot samples get zero actions
    and `has_action=False`, so one batch can hold both (as VD-VAE training needs)."""
    import torch

    if not samples:
        raise ValueError("collate_windows got an empty list of samples")
    cams = sorted(samples[0].frames)
    for s in samples:
        if sorted(s.frames) != cams:
            raise ValueError(
                f"cannot batch windows with different cameras: {cams} vs {sorted(s.frames)} "
                f"(episode {s.episode_index} of {s.dataset})"
            )
    has_action = torch.tensor([s.actions is not None for s in samples])
    actions = None
    if has_action.any():
        ref = next(s.actions for s in samples if s.actions is not None)
        actions = torch.stack([s.actions if s.actions is not None else torch.zeros_like(ref) for s in samples])
    state = None
    if any(s.state is not None for s in samples):
        ref = next(s.state for s in samples if s.state is not None)
        state = torch.stack([s.state if s.state is not None else torch.zeros_like(ref) for s in samples])
    return WindowBatch(
        episode_index=torch.tensor([s.episode_index for s in samples], dtype=torch.int64),
        frame_index=torch.tensor([s.frame_index for s in samples], dtype=torch.int64),
        instruction=[s.instruction for s in samples],
        subtask=[s.subtask for s in samples],
        action_valid=torch.stack([s.action_valid for s in samples]),
        arm_mask=torch.stack([s.arm_mask for s in samples]),
        frames={c: torch.stack([s.frames[c] for s in samples]) for c in cams},
        actions=actions,
        has_action=has_action,
        state=state,
        dataset=[s.dataset for s in samples],
    )


@dataclass
class ChunkBatch:
    """Normalised action chunks only (what the Act-VAE trains on): no frames, no text."""

    actions: torch.Tensor  # (B, H, A, D) float32, chunk-relative and normalised to [-1, 1]
    action_valid: torch.Tensor  # (B, H) bool: False past the episode end
    arm_mask: torch.Tensor  # (B, A) bool: arms the robot has

    def __len__(self) -> int:
        return int(self.actions.shape[0])


@dataclass
class TransitionBatch:
    """Frozen-backbone features of frame pairs (o_t, o_t+H) plus, for robot samples, the chunk
    a[t:t+H] (what the VD-VAE trains on). Action-free samples have zero actions and has_action False."""

    features: torch.Tensor  # (B, F, P, C) float32: clean frames (teacher input, reconstruction target)
    features_aug: torch.Tensor  # (B, F, P, C) float32: the student's (augmented) view
    actions: torch.Tensor  # (B, H, A, D) float32, normalised; zeros for action-free samples
    action_valid: torch.Tensor  # (B, H) bool
    arm_mask: torch.Tensor  # (B, A) bool
    has_action: torch.Tensor  # (B,) bool
    source: torch.Tensor  # (B,) int64: index of the dataset in the mixture

    def __len__(self) -> int:
        return int(self.features.shape[0])


@dataclass
class NTPBatch:
    """Prompt + target token sequences with their images (what CLAP-NTP trains on). Text is
    right-padded; `labels` hold the target ids and IGNORE (-100) on the prompt and padding."""

    visual: torch.Tensor  # (B, N, P, C) float32 frozen frame features, or (B, N, 3, h, w) uint8 pixels
    input_ids: torch.Tensor  # (B, T) int64: prompt then target
    attention_mask: torch.Tensor  # (B, T) int64: 1 for real text, 0 for padding (the model prepends the visual part)
    labels: torch.Tensor  # (B, T) int64
    source: torch.Tensor  # (B,) int64: index of the dataset in the mixture
    # Continuous targets, for CLAP-RF post-training (robot samples only):
    actions: torch.Tensor | None = None  # (B, H, A, D) float32, normalised like the Act-VAE's input
    action_valid: torch.Tensor | None = None  # (B, H) bool
    arm_mask: torch.Tensor | None = None  # (B, A) bool
    state: torch.Tensor | None = None  # (B, A, D) float32, normalised state at t (optional state token)
    # (B,) int64 seeds of each sample's training noise (CLAP-RF flow time and noise), a function of the
    # step and the sample's slot in the GLOBAL batch: every rank draws its own, independent noise, and
    # any number of ranks draws the same noise as one process (None: the global RNG).
    sample_seed: torch.Tensor | None = None

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])


# -- the policy contract ----------------------------------------------------------------------------
# What learned policies (models/), simulators and scripted experts (sim/) and the policy server
# (serve/) all speak; it lives here, below all three (docs/simulation.md, "The contract").
# An observation is a plain dict (so the same object crosses the policy server's msgpack wire):
#
#     {
#       "images":      {camera: (h, w, 3) uint8, upright},
#       "state":       (n*7,) float32: per-arm [x, y, z, roll, pitch, yaw, gripper] of the arms the
#                      robot has, in `arms` order (the dataset's `observation.state` layout),
#       "instruction": str,
#       "robot_type":  str,
#     }
#
# A policy returns an action chunk `(k, n*7)` float32 in the dataset's `action` layout: per arm the
# ABSOLUTE end-effector target pose and gripper command for the next steps (docs/conventions.md).

Observation = dict[str, Any]
IMAGES, STATE, INSTRUCTION, ROBOT_TYPE = "images", "state", "instruction", "robot_type"


@runtime_checkable
class Policy(Protocol):
    def infer(self, observation: Observation) -> np.ndarray:
        """(k, n*7) float32 action chunk for this observation; k >= 1."""
        ...
