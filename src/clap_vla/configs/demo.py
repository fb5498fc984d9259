"""Config of `clap demo`: the whole CLAP pipeline on embedded defaults (Meta-World)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from clap_vla.errors import ConfigError


@dataclass(frozen=True)
class DemoConfig:
    """Generate a small set of the human-video transfer testbed, train Act-VAE -> VD-VAE -> labels ->
    CLAP-NTP -> CLAP-RF, and a CLAP-NTP without the videos as the control, evaluate in closed loop and
    write a report with plots. Each step is skipped when its output exists, and an interrupted
    training step resumes from its last checkpoint."""

    out: Path = Path("outputs/demo")
    """Where every artifact of the demo goes; a second run resumes finished steps."""
    env: Literal["buttons", "metaworld"] = "buttons"
    """Simulator: buttons (four coloured buttons, one task per colour: the paper's object
    generalisation from human video, docs/simulation.md) or metaworld (then name Meta-World tasks)."""
    robot_tasks: str = "press-red-button,press-green-button"
    """Task set A (in distribution): robot demonstrations (with actions) and human-domain videos."""
    video_only_tasks: str = "press-blue-button,press-yellow-button"
    """Task set B (out of distribution): ONLY action-free human-domain videos; the robot never sees a
    demonstration."""
    robot_episodes: int = 20
    """Robot demonstrations per task of set A."""
    video_episodes: int = 12
    """Human-domain videos per task of sets A and B."""
    size: int = 128
    """Image height and width."""
    workers: int = 2
    """Simulator processes for data generation and closed-loop evaluation."""
    act_vae: str = "act_vae_cpu"
    """`clap train act-vae` preset."""
    act_vae_steps: int = 450
    rate_distortion: str = "cpu"
    """`clap eval rate-distortion` preset (its small Act-VAE is trained once per grid point)."""
    rd_grid: tuple[int, ...] = (4, 256, 8, 256, 16, 256)
    """Rate-distortion points as flat (Nq, K) pairs (`clap eval rate-distortion --grid`)."""
    rd_steps: int = 150
    """Training steps per rate-distortion point (the `cpu` preset's small Act-VAE)."""
    vd_vae: str = "vd_vae_small"
    """`clap train vd-vae` preset."""
    vd_vae_steps: int = 160
    ntp: str = "ntp_small"
    """`clap train ntp` preset."""
    ntp_steps: int = 450
    visual_merge: int = 2
    """CLAP-NTP reads each 2x2 block of the frame encoder's 8x8 patch grid as one visual token (16
    tokens instead of 64, same features; `--model.vlm.visual-merge`). NTP steps run 1.7x faster in
    fp32 and held-out token accuracy is no worse (docs/quickstart.md)."""
    post: str = "post_small"
    """`clap train post` preset."""
    adapt_steps: int = 40
    """Post-training stage 1 (NTP adaptation on robot tokens + video pseudo tokens)."""
    post_steps: int = 250
    """Post-training stage 2 (RF head + Knowledge Matching)."""
    post_lr: float = 1e-3
    """Peak learning rate of stage 2 (post_small's 5e-4 is for its 2000 steps; the short demo run
    reached 23.6 dB chunks and 0% success with 300 steps at 5e-4, 24.9 dB and 15% on set A with 500
    steps at 1e-3, 24.3 dB and 25% with 400 steps over merged visual tokens, on the earlier demo's
    Meta-World tasks). The step counts here keep `make demo` within 15 minutes on a 2-core CPU with
    bf16 units (README)."""
    batch_size: int = 32
    """Batch size of every training step except the Act-VAE's (its preset's)."""
    holdout_every: int = 10
    """Every n-th episode is held out of training (for the held-out metrics)."""
    eval_episodes: int = 5
    """Closed-loop episodes per task and policy."""
    eval_max_steps: int = 120
    """Step budget per closed-loop episode (the expert needs 27-80 steps)."""
    latency_repeats: int = 10
    progress: bool = True
    """Progress bars inside each step."""
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.robot_tasks.strip():
            raise ConfigError("robot_tasks is empty: the demo needs robot demonstrations for at least one task")
        both = set(self.tasks_a) & set(self.tasks_b)
        if both:
            raise ConfigError(f"tasks {sorted(both)} are in both robot_tasks and video_only_tasks")
        if len(self.rd_grid) % 2 or not self.rd_grid:
            raise ConfigError(f"rd_grid must hold (Nq, K) pairs, got {self.rd_grid}")
        small = {k: v for k, v in vars(self).items() if k.endswith(("_steps", "_episodes", "_repeats")) and v < 1}
        if small or self.workers < 1 or self.batch_size < 1 or self.holdout_every < 2:
            raise ConfigError(
                f"step, episode, worker and batch counts must be >= 1 (holdout_every >= 2), got {small or vars(self)}"
            )

    @property
    def tasks_a(self) -> list[str]:
        return [t for t in self.robot_tasks.split(",") if t]

    @property
    def tasks_b(self) -> list[str]:
        return [t for t in self.video_only_tasks.split(",") if t]


_TINY = DemoConfig(
    out=Path("outputs/demo_tiny"),
    robot_tasks="press-red-button",
    video_only_tasks="press-blue-button",
    robot_episodes=3,
    video_episodes=2,
    size=64,
    act_vae="act_vae_tiny",
    act_vae_steps=20,
    rate_distortion="tiny",
    rd_grid=(2, 16, 4, 16),
    rd_steps=10,
    vd_vae="vd_vae_tiny",
    vd_vae_steps=6,
    ntp="ntp_tiny",
    ntp_steps=8,
    post="post_tiny",
    adapt_steps=2,
    post_steps=4,
    batch_size=8,
    holdout_every=2,
    eval_episodes=1,
    eval_max_steps=12,
    latency_repeats=2,
    progress=False,
)

DEMO_PRESETS = {
    "default": DemoConfig(),
    # The test suite's end-to-end run: every step on toy sizes, in about a minute.
    "tiny": _TINY,
}
