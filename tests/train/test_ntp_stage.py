"""`clap train ntp` and `clap eval ntp` end to end on real on-disk data: a toy robot dataset, an
action-free video dataset with a token shard, a tiny Act-VAE artifact; 2 steps then resume equals
4 straight; the artifact loads as a policy that returns absolute chunks and drives a real MuJoCo
Meta-World episode through the rollout harness (`--policy <artifact dir>`)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from clap_vla.cli import main
from clap_vla.train import checkpoint as ck

pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from tests.conftest import write_toy
    from tests.train.test_vd_vae_stage import _write_video

    from clap_vla.data.dataset import RobotDataset
    from clap_vla.data.tokens import write_token_shard

    root = tmp_path_factory.mktemp("ntp")
    write_toy(root / "robot", n=10, length=20, size=32)
    _write_video(root / "video")
    av = root / "av"
    assert main(["train", "act-vae", "--config", "act_vae_tiny", "--data", str(root / "robot"), "--out", str(av),
                 "--train.steps", "3", "--train.no-progress"]) == 0  # fmt: skip
    # A token shard for the video, as `clap label --vd-vae` writes it (codes drawn at random here).
    ds = RobotDataset(root / "video")
    cfg = json.loads((av / ck.CONFIG).read_text())["model"]
    nq, k = cfg["codes_per_arm"], cfg["num_codes"]
    ep = np.concatenate([np.full(e.length, e.index) for e in ds.episodes])
    fr = np.concatenate([np.arange(e.length) for e in ds.episodes])
    codes = np.full((len(ep), 2, nq), -1)
    codes[:, 1] = np.random.default_rng(0).integers(0, k, (len(ep), nq))
    meta = {"kind": "pseudo", "act_vae": ck.parent_entry(av), "num_codes": k, "codes_per_arm": nq, "horizon": 8,
            "dataset": {"path": str(ds.root.resolve()), "fingerprint": ds.fingerprint()}}  # fmt: skip
    write_token_shard(root / "tokens", ep, fr, codes, np.zeros(codes.shape, np.float32), meta)
    return root


def _args(root: Path, out: Path, steps: int) -> list[str]:
    return [
        "train", "ntp", "--config", "ntp_tiny", "--act-vae", str(root / "av"), "--robot-data", str(root / "robot"),
        "--video-tokens", str(root / "tokens"), "--features.frame-encoder", "pixels:16", "--out", str(out),
        "--train.steps", str(steps), "--train.no-progress", "--train.checkpoint-every", "2",
        "--train.eval-every", "2",
    ]  # fmt: skip


class Killed(Exception):
    pass


def test_two_steps_then_resume_equals_four_straight(setup, tmp_path, monkeypatch):
    from clap_vla.train import loop

    monkeypatch.setenv("CLAP_CACHE_DIR", str(setup / "cache"))
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert main(_args(setup, straight, 4)) == 0
    save = loop.ck.save_checkpoint

    def save_then_die(run_dir, model, optimizer, step, ema):
        save(run_dir, model, optimizer, step, ema)
        raise Killed

    monkeypatch.setattr(loop.ck, "save_checkpoint", save_then_die)
    with pytest.raises(Killed):
        main(_args(setup, resumed, 4))
    monkeypatch.setattr(loop.ck, "save_checkpoint", save)
    assert main([*_args(setup, resumed, 4), "--resume"]) == 0
    a, b = ck.load_weights(straight / ck.MODEL), ck.load_weights(resumed / ck.MODEL)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], msg=k, rtol=0, atol=0)
    # Tied weights are stored once and restored as the same values under both names.
    assert torch.equal(a["vlm.lm.lm_head.weight"], a["vlm.lm.model.embed_tokens.weight"])
    meta = json.loads((straight / ck.META).read_text())
    assert meta["stage"] == "ntp" and meta["step"] == 4 and len(meta["parents"]["act_vae"]["sha256"]) == 64
    assert {"action_acc", "text_acc", "gen_action_acc"} <= set(meta["eval"])
    assert meta["samples"]["video (video)"] > 0 and meta["norm_stats"][0]["robot_type"] == "toy"
    for d in ("tokenizer", "act_vae"):
        assert (straight / d).is_dir()


def test_torchrun_two_ranks_equal_one_process(setup, tmp_path, monkeypatch):
    """Issue 9: `torchrun --nproc-per-node 2 -m clap_vla train ntp ...` (DDP on gloo, each rank every
    other sample of the global batch, token-count-weighted loss over every rank) trains the same
    weights as one process over the same global batch; only rank 0 writes the artifact."""
    from tests.conftest import assert_torchrun_matches_one_process

    monkeypatch.setenv("CLAP_CACHE_DIR", str(setup / "cache"))
    assert_torchrun_matches_one_process(lambda out: _args(setup, out, 3), setup / "cache", tmp_path)


def test_the_artifact_is_a_policy_for_eval_and_rollout(setup, tmp_path, monkeypatch):
    from clap_vla.configs.sim import RolloutConfig
    from clap_vla.data.dataset import RobotDataset
    from clap_vla.models.ntp_policy import NTPPolicy
    from clap_vla.sim.base import IMAGES, INSTRUCTION, ROBOT_TYPE, STATE
    from clap_vla.sim.rollout import evaluate

    monkeypatch.setenv("CLAP_CACHE_DIR", str(setup / "cache"))
    art = tmp_path / "ntp"
    assert main(_args(setup, art, 3)) == 0
    assert main(["eval", "ntp", "--ntp", str(art), "--samples", "16", "--generate", "2"]) == 0
    ev = json.loads((art / "eval" / "ntp_eval.json").read_text())
    lat = ev["latency"]
    assert 0 <= ev["datasets"]["robot"]["action_acc"] <= 1 and lat["cache_p50_s"] > 0 and lat["no_cache_p50_s"] > 0

    # One observation from the dataset -> an absolute chunk (H, 7) near the current state.
    ds = RobotDataset(setup / "robot")
    cols = ds.episode_columns(0, ["observation.state"])
    state = cols["observation.state"][0]
    frame = ds.frames(0, "observation.images.main", [0])[0]
    pol = NTPPolicy(art)
    chunk = pol.infer({IMAGES: {"main": frame}, STATE: state, INSTRUCTION: ds.tasks[0], ROBOT_TYPE: "toy"})
    assert chunk.shape == (8, 7) and chunk.dtype == np.float32 and np.isfinite(chunk).all()
    assert np.abs(chunk[:, :3] - state[:3]).max() < 10.0  # positions stay in the dataset's range around the state

    # The rollout harness takes the artifact directory as a policy, in a real MuJoCo episode.
    res = evaluate(RolloutConfig(env="metaworld", tasks="reach-v3", episodes=1, workers=1, max_steps=12, size=32),
                   policy=str(art))  # fmt: skip
    assert res["episodes"] == 1 and res["tasks"]["reach-v3"]["outcomes"][0]["steps"] == 12
