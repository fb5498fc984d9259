"""`clap train vd-vae`, `clap label` and `clap eval vd-vae` end to end on real on-disk datasets:
a toy robot dataset, an action-free toy video dataset with evaluation-only true actions, a tiny
Act-VAE artifact; 2 steps then resume equals 4 straight; token shards; the evaluation report."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from tests.conftest import run_killed_after_checkpoint

from clap_vla.cli import main
from clap_vla.train import checkpoint as ck


def _write_video(root: Path, n: int = 10, length: int = 20, size: int = 32, seed: int = 5) -> None:
    """Action-free episodes (frames only) plus the evaluation-only file of their true actions, as
    `clap data gen --domain human` writes it."""
    from clap_vla.data.lerobot_writer import LeRobotWriter
    from clap_vla.data.synthetic import make_toy_episode
    from clap_vla.data.video import VideoEncoding
    from clap_vla.sim.generate import EVAL_ONLY_FILE, _truth_parquet

    rng = np.random.default_rng(seed)
    truth = []
    with LeRobotWriter(root, fps=10, robot_type="human", encoding=VideoEncoding(codec="av1")) as w:
        for i in range(n):
            e = make_toy_episode(rng, length=length + i, arms=("right",), size=size)
            w.add_episode(task=e.task, images={"main": e.frames})
            truth.append({"episode_index": i, "task": e.task, "seed": i, "action": e.action, "state": e.state})
        w.write_file(EVAL_ONLY_FILE, _truth_parquet(truth))


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from tests.conftest import write_toy

    root = tmp_path_factory.mktemp("vdvae")
    write_toy(root / "robot", n=10, length=20, size=32)
    _write_video(root / "video")
    av = root / "av"
    assert (
        main(
            [
                "train",
                "act-vae",
                "--config",
                "act_vae_tiny",
                "--data",
                str(root / "robot"),
                "--out",
                str(av),
                "--train.steps",
                "3",
                "--train.no-progress",
            ]
        )
        == 0
    )
    return root


def _args(root: Path, out: Path, steps: int) -> list[str]:
    return [
        "train", "vd-vae", "--config", "vd_vae_tiny", "--act-vae", str(root / "av"),
        "--robot-data", str(root / "robot"), "--video-data", str(root / "video"),
        "--out", str(out), "--train.steps", str(steps), "--train.no-progress",
    ]  # fmt: skip


def test_two_steps_then_resume_equals_four_straight(setup, tmp_path, monkeypatch):
    monkeypatch.setenv("CLAP_CACHE_DIR", str(setup / "cache"))
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    args = ["--train.checkpoint-every", "2"]
    assert main([*_args(setup, straight, 4), *args]) == 0
    run_killed_after_checkpoint(monkeypatch, [*_args(setup, resumed, 4), *args])  # dies after step 2
    assert main([*_args(setup, resumed, 4), *args, "--resume"]) == 0

    a = ck.load_weights(straight / ck.MODEL)
    b = ck.load_weights(resumed / ck.MODEL)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], msg=k, rtol=0, atol=0)
    meta = json.loads((straight / ck.META).read_text())
    assert meta["step"] == 4 and len(meta["parents"]["act_vae"]["sha256"]) == 64
    assert {"token_acc", "psnr", "top1", "top5"} <= set(meta["eval"])
    cfg = json.loads((straight / ck.CONFIG).read_text())
    assert cfg["model"]["codes_per_arm"] == 4 and cfg["features"]["frame_encoder"] == "pixels:16"
    # The frozen Act-VAE inside the artifact is bit-identical to the parent's.
    parent = ck.load_weights(setup / "av" / ck.MODEL)
    for k, v in parent.items():
        assert torch.equal(a[f"act_vae.{k}"], v), k


def test_torchrun_two_ranks_equal_one_process(setup, tmp_path, monkeypatch):
    """Issue 9: `torchrun --nproc-per-node 2 -m clap_vla train vd-vae ...` (DDP on gloo; SigLIP with
    negatives from every rank; masked means over every rank; the code-usage term over the global
    batch's histograms) trains the same weights as one process over the same global batch."""
    from tests.conftest import assert_torchrun_matches_one_process

    monkeypatch.setenv("CLAP_CACHE_DIR", str(setup / "cache"))
    args = lambda out: [*_args(setup, out, 3), "--model.w-usage", "0.5"]  # noqa: E731
    assert_torchrun_matches_one_process(args, setup / "cache", tmp_path)


def test_label_and_eval(setup, tmp_path, monkeypatch):
    from clap_vla.data.tokens import read_token_shard

    monkeypatch.setenv("CLAP_CACHE_DIR", str(setup / "cache"))
    vd = tmp_path / "vd"
    assert main(_args(setup, vd, 3)) == 0
    # Pseudo tokens of the video dataset.
    shard = tmp_path / "video_tokens"
    assert main(["label", "--vd-vae", str(vd), "--data", str(setup / "video"), "--out", str(shard),
                 "--no-progress"]) == 0  # fmt: skip
    cols, meta = read_token_shard(shard)
    from clap_vla.data.dataset import RobotDataset

    ds = RobotDataset(setup / "video")
    assert meta["kind"] == "pseudo" and meta["codes_per_arm"] == 4 and meta["num_codes"] == 64
    assert len(cols["episode_index"]) == ds.num_frames  # one row per frame (single arm)
    assert set(cols["arm"]) == {"right"} and cols["codes"].shape == (ds.num_frames, 4)
    assert (cols["distance"] >= 0).all()
    assert main(["label", "--vd-vae", str(vd), "--data", str(setup / "video"), "--out", str(shard),
                 "--no-progress"]) != 0  # exists: refuses  # fmt: skip
    # True tokens of the robot dataset equal the Act-VAE's own encoding.
    true_shard = tmp_path / "robot_tokens"
    assert main(["label", "--act-vae", str(setup / "av"), "--data", str(setup / "robot"), "--out",
                 str(true_shard), "--no-progress", "--stride", "2"]) == 0  # fmt: skip
    cols, meta = read_token_shard(true_shard)
    assert meta["kind"] == "true" and (cols["frame_index"] % 2 == 0).all()
    from clap_vla.artifacts import norm_stats_for
    from clap_vla.data.normalize import ActionNormalizer
    from clap_vla.data.windows import WindowConfig, WindowDataset
    from clap_vla.models.act_vae import load_act_vae

    model, am = load_act_vae(setup / "av")
    norm = ActionNormalizer(norm_stats_for(setup / "av", am, setup / "robot"))
    wd = WindowDataset(RobotDataset(setup / "robot"), WindowConfig(horizon=8, cameras=()), norm)
    for j in (0, 7, len(cols["codes"]) - 1):
        ep, t = cols["episode_index"][j], cols["frame_index"][j]
        w = wd[int(np.nonzero((wd.index[:, 0] == ep) & (wd.index[:, 1] == t))[0][0])]
        ids = model.encode(w.actions[None], w.arm_mask[None])[0, 1]  # toy data is single-arm: right
        assert ids.tolist() == cols["codes"][j].tolist()

    # Evaluation: robot and video (scored against the evaluation-only truth), with a comparison model.
    out = tmp_path / "eval"
    assert main(["eval", "vd-vae", "--vd-vae", str(vd), "--video-data", str(setup / "video"), "--compare", str(vd),
                 "--out", str(out), "--tsne-points", "60", "--limit", "50"]) == 0  # fmt: skip
    ev = json.loads((out / "eval.json").read_text())
    kinds = [r["kind"] for r in ev["datasets"]]
    assert kinds == ["robot", "video"]
    for r in ev["datasets"]:
        m = r["vd_vae"]
        assert 0 <= m["token_acc"] <= 1 and 0 <= m["top1"] <= m["top5"] <= 1 and m["items"] > 0
        assert m == r["compare"]  # the same model scored twice gives the same numbers
        # every correct token is a read code the truth uses, so the share can only be larger
        assert m["token_acc"] <= m["read_in_true"] <= 1 and 1 <= m["codes_read"] <= 64 >= m["codes_true"] >= 1
    assert (out / "latents_tsne.png").stat().st_size > 1000
    assert [r["episodes"] for r in ev["datasets"]] == ["held-out episodes"] * 2  # both were trained on

    # A video set the VD-VAE never trained on is read on all its episodes (here fewer than holdout_every).
    _write_video(tmp_path / "unseen", n=3, seed=11)
    out2 = tmp_path / "eval_unseen"
    assert main(["eval", "vd-vae", "--vd-vae", str(vd), "--video-data", str(tmp_path / "unseen"),
                 "--out", str(out2), "--tsne-points", "0"]) == 0  # fmt: skip
    unseen = json.loads((out2 / "eval.json").read_text())["datasets"][1]
    assert unseen["episodes"] == "all (not trained on)"
    assert unseen["transitions"] == RobotDataset(tmp_path / "unseen").num_frames == unseen["vd_vae"]["items"]


def test_label_a_video_smaller_than_the_holdout_period(setup, tmp_path, monkeypatch):
    """A handful of imported clips (fewer episodes than holdout_every) is still labelled, every frame."""
    from clap_vla.data.dataset import RobotDataset
    from clap_vla.data.tokens import read_token_shard

    monkeypatch.setenv("CLAP_CACHE_DIR", str(setup / "cache"))
    _write_video(tmp_path / "few", n=3, seed=9)
    vd = tmp_path / "vd"
    assert main(_args(setup, vd, 2)) == 0
    out = tmp_path / "few_tokens"
    assert (
        main(["label", "--vd-vae", str(vd), "--data", str(tmp_path / "few"), "--out", str(out), "--no-progress"]) == 0
    )
    cols, meta = read_token_shard(out)
    assert len(cols["codes"]) == RobotDataset(tmp_path / "few").num_frames
    # The shard names the Act-VAE frozen inside the VD-VAE (its hash at training time).
    assert meta["act_vae"] == json.loads((vd / ck.META).read_text())["parents"]["act_vae"]


def test_tsne_legend_names_every_task_once_including_video_only_ones():
    from clap_vla.stages.eval_vd_vae import tsne_legend

    task = ["open the door", "open the door", "wave", "open the door", "wave"]
    domain = ["video", "robot", "video", "video", "video"]
    assert tsne_legend(task, domain) == {
        ("open the door", "robot"): "open the door",
        ("wave", "video"): "wave (video only)",
    }


def test_dataset_norm_trains_labels_and_evaluates_on_standardised_features(setup, tmp_path, monkeypatch):
    """--features.dataset-norm: every dataset is read through its own feature statistics, in
    training, labelling and evaluation (taken from the artifact's config)."""
    from clap_vla.configs.vd_vae import FeatureConfig
    from clap_vla.data.providers import feature_provider
    from clap_vla.data.tokens import read_token_shard
    from clap_vla.data.transitions import StandardizedFeatures
    from clap_vla.nn.frame_encoders import build_frame_encoder

    monkeypatch.setenv("CLAP_CACHE_DIR", str(setup / "cache"))
    vd = tmp_path / "vd"
    assert main([*_args(setup, vd, 2), "--features.dataset-norm"]) == 0
    fcfg = FeatureConfig(**json.loads((vd / ck.CONFIG).read_text())["features"])
    assert fcfg.dataset_norm
    enc = build_frame_encoder(fcfg.frame_encoder, precision=fcfg.precision)
    for name in ("robot", "video"):
        p = feature_provider(setup / name, fcfg, enc, progress=False, clean_only=True)
        assert isinstance(p, StandardizedFeatures)
        from clap_vla.data.dataset import RobotDataset

        n = RobotDataset(setup / name).num_frames  # under the 2048-frame sample: stats of all frames
        f = p.get(np.arange(n), np.zeros(n, np.int64)).double().flatten(0, 1)
        live = f.std(0) > 0.5  # channels that vary (constant ones map to 0)
        assert live.sum() > 10
        torch.testing.assert_close(f.mean(0), torch.zeros_like(f.mean(0)), atol=1e-3, rtol=0)
        torch.testing.assert_close(
            f.std(0, unbiased=False)[live], torch.ones(int(live.sum()), dtype=f.dtype), atol=1e-3, rtol=0
        )
    shard = tmp_path / "tokens"
    assert (
        main(["label", "--vd-vae", str(vd), "--data", str(setup / "video"), "--out", str(shard), "--no-progress"]) == 0
    )
    cols, _ = read_token_shard(shard)
    assert cols["codes"].shape[1] == 4 and np.isfinite(cols["distance"]).all()
    # The labels were read off the standardised features, not the raw ones.
    from clap_vla.data.transitions import iterate, load_transitions
    from clap_vla.models.vd_vae import load_vd_vae

    model, _ = load_vd_vae(vd, "cpu")
    tset, _ = load_transitions(setup / "video", 8, holdout_every=None, progress=False)
    for norm in (True, False):
        tset.features = feature_provider(setup / "video", replace(fcfg, dataset_norm=norm), enc, False, True)
        _, b = next(iterate(tset, 16))
        with torch.no_grad():
            _, dist, _ = model.infer_codes(b.features, b.arm_mask)
        read = torch.from_numpy(cols["distance"][:16]).float()
        assert torch.allclose(dist[:, 1], read, atol=1e-5) == norm  # arm 1 = right, the video's hand
    out = tmp_path / "eval"
    assert main(["eval", "vd-vae", "--vd-vae", str(vd), "--video-data", str(setup / "video"), "--out", str(out),
                 "--tsne-points", "0", "--limit", "40"]) == 0  # fmt: skip
    assert [r["kind"] for r in json.loads((out / "eval.json").read_text())["datasets"]] == ["robot", "video"]


def test_per_clip_online_augmentation_trains_resumes_and_labels(setup, tmp_path, monkeypatch):
    """--features.no-cache --features.augment-per-clip: the student's augmentation is drawn per
    transition and afresh every step, through the encoder, over a clean cache; 2 steps + resume
    equals 3 straight, and the artifact labels videos."""
    monkeypatch.setenv("CLAP_CACHE_DIR", str(setup / "cache_clip"))
    clip = ["--features.no-cache", "--features.augment-per-clip", "--train.checkpoint-every", "2"]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert main([*_args(setup, straight, 3), *clip]) == 0
    run_killed_after_checkpoint(monkeypatch, [*_args(setup, resumed, 3), *clip])
    assert main([*_args(setup, resumed, 3), *clip, "--resume"]) == 0
    a, b = ck.load_weights(straight / ck.MODEL), ck.load_weights(resumed / ck.MODEL)
    for k in a:
        torch.testing.assert_close(a[k], b[k], msg=k, rtol=0, atol=0)
    assert json.loads((straight / ck.CONFIG).read_text())["features"]["augment_per_clip"] is True
    # Online per-frame augmentation trains other weights: the option reaches training.
    plain = tmp_path / "plain"
    assert main([*_args(setup, plain, 3), "--features.no-cache"]) == 0
    c = ck.load_weights(plain / ck.MODEL)
    assert any(not torch.equal(a[k], c[k]) for k in a if not k.startswith("act_vae."))
    out = tmp_path / "tokens"
    assert main(["label", "--vd-vae", str(straight), "--data", str(setup / "video"), "--out", str(out),
                 "--no-progress"]) == 0  # fmt: skip
    assert (out / "meta.json").exists()


def test_heading_metric_against_a_naive_float64_loop():
    """net_translation takes each chunk's last valid step, un-normalised; heading_cosines scores
    only chunks that move at least MIN_MOTION, and a zero prediction scores 0."""
    from clap_vla.data.action_space import ArmLayout
    from clap_vla.data.normalize import ActionNormalizer, compute_norm_stats
    from clap_vla.eval.vd_vae import MIN_MOTION, heading_cosines, net_translation

    rng = np.random.default_rng(0)
    B, H = 6, 5
    raw = rng.normal(scale=0.05, size=(200, H, 2, 7))
    norm = ActionNormalizer(compute_norm_stats(raw, np.ones((200, H), bool), ArmLayout(("right",)),
                                               relative=True, horizon=H))  # fmt: skip
    chunks = torch.from_numpy(rng.uniform(-1, 1, size=(B, H, 2, 7)).astype(np.float32))
    valid = torch.ones(B, H, dtype=torch.bool)
    valid[1, 3:] = False  # a padded tail: its last valid step is 2
    valid[2, 1:] = False
    got = net_translation(chunks, valid, norm)
    for b in range(B):
        last = int(np.nonzero(valid[b].numpy())[0].max())
        for a in range(2):
            for d in range(2):
                want = float(chunks[b, last, a, d]) * norm.half[a, d] + norm.center[a, d]
                assert abs(got[b, a, d] - want) < 1e-6
    true = np.array([[0.1, 0], [0, 0.05], [0.001, 0], [0, -0.03]])
    pred = np.array([[0.2, 0], [0, -1.0], [5.0, 0], [0, 0]])
    cos = heading_cosines(pred, true)
    assert np.linalg.norm(true[2]) < MIN_MOTION  # too short to have a heading: dropped
    np.testing.assert_allclose(cos, [1.0, -1.0, 0.0], atol=1e-12)
