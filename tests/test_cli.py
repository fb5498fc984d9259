import json
import subprocess
import sys

from clap_vla.cli import main


def test_help_is_light():
    code = (
        "import sys; from clap_vla.cli import main; main(['--help']); "
        "heavy = [m for m in ('torch', 'transformers', 'mujoco', 'metaworld', 'av', 'pyarrow') if m in sys.modules]; "
        "print('HEAVY', heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "clap data info" in out and "HEAVY []" in out


def test_did_you_mean(capsys):
    assert main(["dat", "info"]) == 2
    assert "Did you mean 'data'" in capsys.readouterr().err
    assert main(["data", "valdate"]) == 2
    assert "Did you mean 'validate'" in capsys.readouterr().err
    assert main(["data", "synth", "--config", "tinny"]) == 2
    assert "Did you mean 'tiny'" in capsys.readouterr().err
    assert main(["serve"]) == 2  # --policy is required
    assert "--policy" in capsys.readouterr().err
    assert main(["train"]) == 0  # a group alone lists its commands
    assert "act-vae" in capsys.readouterr().out


def test_info_validate_and_norm_stats(toy, tmp_path, capsys):
    root, _eps = toy
    assert main(["data", "info", str(root), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["episodes"] == 3 and info["action_free"] is False and "observation.images.main" in info["cameras"]
    assert main(["data", "validate", str(root)]) == 0
    assert main(["data", "norm-stats", str(root), "--horizon", "8", "--out", str(tmp_path / "n")]) == 0
    assert json.loads((tmp_path / "n/norm_stats.json").read_text())["horizon"] == 8


def test_validate_reports_problems_with_exit_1(toy, tmp_path, capsys):
    import shutil

    root, _ = toy
    bad = tmp_path / "bad"
    shutil.copytree(root, bad)
    next(bad.rglob("*.mp4")).write_bytes(b"junk")
    assert main(["data", "validate", str(bad)]) == 1
    assert "file-000.mp4" in capsys.readouterr().err


def test_config_validation_error_names_the_field(tmp_path, capsys):
    assert main(["data", "import-videos", str(tmp_path), "--out", str(tmp_path / "o"), "--fps", "0"]) == 2
    assert "fps must be positive" in capsys.readouterr().err


def test_a_closed_pipe_ends_quietly(toy):
    """`clap data info DS | head -1`: the reader leaves before clap writes; no traceback, SIGPIPE's code."""
    import os

    root, _ = toy
    read, write = os.pipe()
    os.close(read)  # the reader has already gone, so the first write fails with EPIPE
    try:
        code = "import sys; from clap_vla.cli import main; sys.exit(main(sys.argv[1:]))"
        p = subprocess.run(
            [sys.executable, "-c", code, "data", "info", str(root)], stdout=write, stderr=subprocess.PIPE, text=True
        )
    finally:
        os.close(write)
    assert p.returncode == 141, p.stderr
    assert "Traceback" not in p.stderr and "BrokenPipeError" not in p.stderr, p.stderr
