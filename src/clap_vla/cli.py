"""The `clap` entry point: `clap <group> <command> [--config PRESET] [flags]`.

Dispatch only: each command names its config dataclass, its presets and the stage function that
runs it, all as import paths, so `clap --help` imports neither torch nor any simulator. Flags are
parsed by tyro from the frozen config dataclass; `--config NAME` picks a preset as the defaults.
"""

from __future__ import annotations

import difflib
import importlib
import sys
from dataclasses import dataclass


@dataclass(frozen=True)
class Command:
    group: str
    name: str  # "" for a group that is itself the command (`clap demo`)
    summary: str
    config: str  # "module:Class"
    run: str  # "module:function"
    presets: str | None = None  # "module:DICT" of name -> config instance

    @property
    def usage(self) -> str:
        return f"clap {self.group} {self.name}".rstrip()


COMMANDS = [
    Command(
        "data",
        "info",
        "Describe a LeRobot dataset (episodes, frames, fps, features, cameras, tasks)",
        "clap_vla.configs.data:InfoConfig",
        "clap_vla.stages.data_info:run",
    ),
    Command(
        "data",
        "validate",
        "Check every file, episode, video frame and value of a dataset",
        "clap_vla.configs.data:ValidateConfig",
        "clap_vla.stages.data_validate:run",
    ),
    Command(
        "data",
        "import-videos",
        "Turn a folder of video clips into an action-free LeRobot v3 dataset",
        "clap_vla.configs.data:ImportVideosConfig",
        "clap_vla.stages.data_import_videos:run",
    ),
    Command(
        "data",
        "synth",
        "Write procedural toy robot episodes as a LeRobot v3 dataset",
        "clap_vla.configs.data:SynthConfig",
        "clap_vla.stages.data_synth:run",
        "clap_vla.configs.data:SYNTH_PRESETS",
    ),
    Command(
        "data",
        "norm-stats",
        "Compute action normalisation stats (chunk-relative, q01/q99)",
        "clap_vla.configs.data:NormStatsConfig",
        "clap_vla.stages.data_norm_stats:run",
    ),
    Command(
        "data",
        "gen",
        "Scripted-expert demonstrations from a simulator (metaworld, buttons, robosuite) as a LeRobot dataset",
        "clap_vla.configs.sim:GenConfig",
        "clap_vla.stages.data_gen:run",
        "clap_vla.configs.sim:GEN_PRESETS",
    ),
    Command(
        "train",
        "act-vae",
        "Train the Act-VAE action tokenizer on robot datasets' action chunks",
        "clap_vla.configs.act_vae:ActVAETrainConfig",
        "clap_vla.stages.train_act_vae:run",
        "clap_vla.configs.act_vae:ACT_VAE_TRAIN_PRESETS",
    ),
    Command(
        "train",
        "vd-vae",
        "Train the VD-VAE: video transitions aligned to a frozen Act-VAE's codebook (SigLIP)",
        "clap_vla.configs.vd_vae:VDVAETrainConfig",
        "clap_vla.stages.train_vd_vae:run",
        "clap_vla.configs.vd_vae:VD_VAE_TRAIN_PRESETS",
    ),
    Command(
        "train",
        "ntp",
        "Train CLAP-NTP: a VLM that writes the subtask and action tokens (robot + labelled video)",
        "clap_vla.configs.ntp:NTPTrainConfig",
        "clap_vla.stages.train_ntp:run",
        "clap_vla.configs.ntp:NTP_TRAIN_PRESETS",
    ),
    Command(
        "train",
        "post",
        "Post-train CLAP-NTP into CLAP-RF: NTP adaptation, then a rectified-flow head with Knowledge Matching",
        "clap_vla.configs.post:PostTrainConfig",
        "clap_vla.stages.train_post:run",
        "clap_vla.configs.post:POST_TRAIN_PRESETS",
    ),
    Command(
        "label",
        "",
        "Action-token shards: pseudo tokens of videos (--vd-vae) or true tokens of robot data (--act-vae)",
        "clap_vla.configs.vd_vae:LabelConfig",
        "clap_vla.stages.label:run",
    ),
    Command(
        "eval",
        "act-vae",
        "Act-VAE reconstruction on a dataset: per-dimension MSE, PSNR, rate, codebook usage, plots",
        "clap_vla.configs.act_vae:ActVAEEvalConfig",
        "clap_vla.stages.eval_act_vae:run",
    ),
    Command(
        "eval",
        "rate-distortion",
        "Train one Act-VAE per (Nq, K) grid point; PSNR-vs-rate table (paper Table V) and plot",
        "clap_vla.configs.act_vae:RateDistortionConfig",
        "clap_vla.stages.eval_rate_distortion:run",
        "clap_vla.configs.act_vae:RATE_DISTORTION_PRESETS",
    ),
    Command(
        "eval",
        "vd-vae",
        "VD-VAE alignment: token accuracy, decoded PSNR, retrieval on robot and human videos; t-SNE",
        "clap_vla.configs.vd_vae:VDVAEEvalConfig",
        "clap_vla.stages.eval_vd_vae:run",
    ),
    Command(
        "eval",
        "ntp",
        "CLAP-NTP on held-out episodes: token accuracy (teacher-forced, free-running), decode latency",
        "clap_vla.configs.ntp:NTPEvalConfig",
        "clap_vla.stages.eval_ntp:run",
    ),
    Command(
        "eval",
        "latency",
        "Per-chunk latency of CLAP-NTP decoding vs CLAP-RF denoising on the same backbone (p50/p95, breakdown)",
        "clap_vla.configs.post:LatencyConfig",
        "clap_vla.stages.eval_latency:run",
    ),
    Command(
        "eval",
        "rollout",
        "Closed-loop success of a policy in simulation (per task, mean, 95% Wilson interval)",
        "clap_vla.configs.sim:RolloutConfig",
        "clap_vla.stages.eval_rollout:run",
        "clap_vla.configs.sim:ROLLOUT_PRESETS",
    ),
    Command(
        "serve",
        "",
        "Serve a policy over websockets to openpi clients (msgpack-numpy protocol; docs/serving.md)",
        "clap_vla.configs.serve:ServeConfig",
        "clap_vla.stages.serve:run",
    ),
    Command(
        "demo",
        "",
        "The end-to-end job on embedded defaults (what `make demo` runs)",
        "clap_vla.configs.demo:DemoConfig",
        "clap_vla.stages.demo:run",
        "clap_vla.configs.demo:DEMO_PRESETS",
    ),
]
# Groups whose commands arrive with later stages of the pipeline (see README, "Stages").
PLANNED: dict[str, str] = {}
GROUPS = ["data", "train", "label", "eval", "serve", "demo"]


def _load(path: str):
    module, _, attr = path.partition(":")
    return getattr(importlib.import_module(module), attr)


def _overview() -> str:
    width = max(len(c.usage) for c in COMMANDS) + 2
    lines = [
        "usage: clap <group> <command> [--config PRESET] [flags]",
        "",
        "CLAP (arXiv 2601.04061): Act-VAE action tokens, VD-VAE video alignment, NTP and RF policies.",
        "",
        "commands:",
    ]
    for g in GROUPS:
        cmds = [c for c in COMMANDS if c.group == g]
        lines += [f"  {c.usage:<{width}}{c.summary}" for c in cmds]
        if not cmds:
            lines.append(f"  {'clap ' + g:<{width}}not implemented yet (planned: {PLANNED.get(g, 'a later stage')})")
    lines += ["", "`clap <group> <command> --help` lists a command's flags and presets."]
    return "\n".join(lines)


def _suggest(word: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=3, cutoff=0.5)
    return f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else f" Choices: {', '.join(choices)}."


def _fail(msg: str) -> int:
    print(f"clap: error: {msg}", file=sys.stderr)
    return 2


def _pop_config(args: list[str]) -> tuple[str | None, list[str]]:
    rest, name, i = [], None, 0
    while i < len(args):
        a = args[i]
        if a == "--config":
            if i + 1 >= len(args):
                raise ValueError("--config needs a preset name")
            name, i = args[i + 1], i + 2
            continue
        if a.startswith("--config="):
            name = a.split("=", 1)[1]
        else:
            rest.append(a)
        i += 1
    return name, rest


def main(argv: list[str] | None = None) -> int:
    try:
        rc = _main(argv)
        sys.stdout.flush()  # a closed pipe shows here, not in the interpreter's flush at exit
        return rc
    except BrokenPipeError:
        # The reader left early (`clap data info DS | head -3`): stop quietly, as `git log | head` does.
        # stdout now points at a closed pipe; aim it at /dev/null so the flush at exit stays silent.
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # 128 + SIGPIPE, the shell's code for a writer whose reader closed the pipe


def _main(argv: list[str] | None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_overview())
        return 0
    if argv[0] == "--version":
        from clap_vla import __version__

        print(__version__)
        return 0
    group, rest = argv[0], argv[1:]
    if group not in GROUPS:
        return _fail(f"unknown group {group!r}." + _suggest(group, GROUPS))
    cmds = {c.name: c for c in COMMANDS if c.group == group}
    if not cmds:
        return _fail(f"`clap {group}` has no commands yet (planned: {PLANNED.get(group, 'a later stage')}).")
    if "" in cmds:
        cmd = cmds[""]
    else:
        if not rest or rest[0] in ("-h", "--help"):
            print(f"usage: clap {group} <command> [flags]\n\ncommands:")
            for c in cmds.values():
                print(f"  {c.name:<16}{c.summary}")
            return 0
        name, rest = rest[0], rest[1:]
        if name not in cmds:
            return _fail(f"unknown command {name!r} in `clap {group}`." + _suggest(name, list(cmds)))
        cmd = cmds[name]

    try:
        preset_name, rest = _pop_config(rest)
    except ValueError as e:
        return _fail(str(e))
    import tyro

    from clap_vla.errors import ClapError

    config_cls = _load(cmd.config)
    presets = _load(cmd.presets) if cmd.presets else {}
    default = None
    if preset_name is not None:
        if preset_name not in presets:
            if not presets:
                return _fail(f"`{cmd.usage}` has no presets")
            return _fail(f"unknown preset {preset_name!r} for `{cmd.usage}`." + _suggest(preset_name, list(presets)))
        default = presets[preset_name]
    description = cmd.summary
    if presets:
        description += f"\n\npresets (--config NAME): {', '.join(presets)}"
    try:
        config = tyro.cli(config_cls, args=rest, default=default, prog=cmd.usage, description=description)
    except ClapError as e:  # raised by a config's __post_init__ validation
        return _fail(str(e))
    except SystemExit as e:  # tyro prints its own message for --help and bad flags
        return int(e.code or 0)
    try:
        result = _load(cmd.run)(config)
    except (ClapError, FileExistsError, FileNotFoundError) as e:
        return _fail(str(e))
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return int(result or 0)


if __name__ == "__main__":
    raise SystemExit(main())
