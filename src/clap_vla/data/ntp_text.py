"""The CLAP-NTP text format (paper §III-D): the prompt, the target, the action-token ids of a
sample's codes. One definition, read by the sample builder (data/ntp.py) and the model
(models/ntp_policy.py, which decodes with it).

    [visual tokens] PROMPT | TARGET <ACT_..> x Nq per arm

Labels are IGNORE on the prompt and padding; action tokens come in arm order left then right
(`types.ARM_NAMES`), Nq per arm the robot has; code k of the Act-VAE's codebook is token id
`act_offset + k`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from clap_vla.types import NUM_ARMS

if TYPE_CHECKING:
    import torch

PROMPT = (
    "Robot category: {robot}. Control the robot to do the task: {instruction}. "
    "Output the subtask and the action tokens."
)
TARGET = "Subtask: {subtask}\nAction:"
ACTION_MARK = "Action:"
IGNORE = -100


def prompt_text(robot: str, instruction: str) -> str:
    return PROMPT.format(robot=robot or "robot", instruction=instruction.strip().rstrip("."))


def target_text(subtask: str) -> str:
    return TARGET.format(subtask=subtask.strip() or "none")


def codes_to_ids(codes: np.ndarray | torch.Tensor, offset: int) -> list[int]:
    """(A, Nq) codes of one sample, -1 rows for absent arms -> token ids in arm order left, right."""
    c = np.asarray(codes)
    return [int(offset + k) for a in range(NUM_ARMS) if (c[a] >= 0).all() for k in c[a]]


def ids_to_codes(ids: list[int] | np.ndarray, arm_mask: np.ndarray, codes_per_arm: int, offset: int) -> np.ndarray:
    """Inverse of `codes_to_ids`: -> (A, Nq) int64 with -1 rows for absent arms."""
    mask = np.asarray(arm_mask, bool)
    ids = np.asarray(ids, np.int64)
    if len(ids) != mask.sum() * codes_per_arm:
        raise ValueError(f"{len(ids)} action tokens for {int(mask.sum())} arm(s) x Nq {codes_per_arm}")
    out = np.full((NUM_ARMS, codes_per_arm), -1, np.int64)
    out[mask] = (ids - offset).reshape(-1, codes_per_arm)
    return out
