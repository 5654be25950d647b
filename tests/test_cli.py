"""The ``gmk`` command: unknown flags rejected everywhere, ``gmk bench`` forwarding, ``gmk train`` and
``gmk sample`` end to end, and bad input (names, paths, checkpoints) as one line and exit status 2 with
nothing overwritten."""
import os
import shutil
import subprocess
import sys
import wave

import pytest

from gmkernels import cli
from gmkernels.cli import main

TINY = ["--size", "tiny", "--batch-size", "4", "--eval-every", "1000", "--threads", "1"]


def gmk(*args) -> int:
    """``gmk args``'s exit status, in this process (argparse's errors exit through SystemExit)."""
    try:
        return main([str(arg) for arg in args])
    except SystemExit as exit_:
        return exit_.code


@pytest.fixture(scope="module")
def image_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "image"
    assert gmk("train", "gated_pixelcnn", "--data", "digits", "--steps", "2", "--samples", "4",
               "--out", out, *TINY) == 0
    return out


@pytest.fixture(scope="module")
def audio_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "audio"
    assert gmk("train", "wavenet", "--steps", "1", "--samples", "1", "--out", out, *TINY) == 0
    return out


@pytest.mark.parametrize("command", [["info", "--bogus"], ["train", "wavenet", "--bogus"],
                                     ["sample", "d", "--x"], ["train"], ["bogus"]])
def test_unknown_flags_and_commands_exit_2(command, capsys):
    assert gmk(*command) == 2
    assert "error:" in capsys.readouterr().err


def test_bench_forwards_its_arguments(capsys):
    assert gmk("bench", "--bogus") == 2  # the harness's own parser rejects it
    assert "--bogus" in capsys.readouterr().err


def test_train_writes_the_run(image_run, audio_run, capsys):
    from PIL import Image

    for name in ("checkpoint.pt", "metrics.jsonl", "loss.png", "samples.png"):
        assert (image_run / name).is_file() and (audio_run / name).is_file()
    with Image.open(image_run / "samples.png") as grid:
        assert grid.size == (2 * 65 + 1, 2 * 65 + 1)
    assert (audio_run / "samples.wav").is_file()


def test_sample_writes_a_grid_or_a_wav(image_run, audio_run, tmp_path, capsys):
    from PIL import Image

    assert gmk("sample", image_run, "--n", 9, "--out", tmp_path / "grid.png", "--seed", 3) == 0
    with Image.open(tmp_path / "grid.png") as grid:
        assert grid.size == (3 * 65 + 1, 3 * 65 + 1)
    first = (tmp_path / "grid.png").read_bytes()
    assert gmk("sample", image_run, "--n", 9, "--out", tmp_path / "again.png", "--seed", 3) == 0
    assert (tmp_path / "again.png").read_bytes() == first
    assert gmk("sample", audio_run, "--n", 2, "--length", 100, "--out", tmp_path / "a.wav") == 0
    with wave.open(str(tmp_path / "a.wav")) as file:
        assert file.getnframes() == 2 * 100 + 2000  # two clips and a quarter second of silence at 8 kHz
    assert f"wrote {tmp_path / 'a.wav'}" in capsys.readouterr().out


def error_line(capsys, command: str) -> str:
    err = capsys.readouterr().err
    assert err.startswith(f"gmk {command}: error: ") and err.count("\n") == 1, err
    return err


@pytest.mark.parametrize("args, message", [
    (["bogus"], "unknown model 'bogus'"),
    (["pixelcnn", "--data", "bogus"], "unknown data 'bogus'"),
    (["wavenet", "--data", "digits"], "wavenet is an audio model"),
    (["pixelcnn", "--lr", "-1"], "--lr must be a positive number"),
    (["pixelcnn", "--size", "huge"], "--size must be"),
    (["pixelcnn", "--batch-size", "5000"], "larger than the training split"),
    (["glow", "--set", "revers=true"], "GlowConfig has no field 'revers'"),
    (["glow", "--set", "reversible"], "--set takes FIELD=VALUE"),
    (["glow", "--set", "steps_per_level=0"], "steps_per_level must be"),
])
def test_bad_train_input_is_one_line(tmp_path, capsys, args, message):
    assert gmk("train", *args, "--out", tmp_path / "run", "--steps", "1", "--threads", "1") == 2
    assert message in error_line(capsys, "train")


def test_unwritable_out(tmp_path, capsys):
    (tmp_path / "file").write_text("")
    assert gmk("train", "pixelcnn", "--out", tmp_path / "file" / "run", *TINY) == 2
    assert "cannot write there" in error_line(capsys, "train")


def test_an_old_run_is_never_overwritten(image_run, tmp_path, capsys):
    out = tmp_path / "run"
    shutil.copytree(image_run, out)
    before = {path.name: path.read_bytes() for path in out.iterdir()}
    assert gmk("train", "gated_pixelcnn", "--data", "digits", "--steps", "4", "--out", out, *TINY) == 2
    assert "already holds a run" in error_line(capsys, "train")
    for args, message in ((["pixelcnn", "--resume"], "holds a gated_pixelcnn run"),
                          (["gated_pixelcnn", "--resume", "--lr", "0.5"], "--lr cannot change"),
                          (["gated_pixelcnn", "--resume", "--steps", "2"], "at step 2 already")):
        assert gmk("train", *args, "--out", out, "--threads", "1") == 2
        assert message in error_line(capsys, "train")
    (out / "checkpoint.pt").write_bytes(before["checkpoint.pt"][:1000])  # a truncated checkpoint
    assert gmk("train", "gated_pixelcnn", "--resume", "--steps", "4", "--out", out) == 2
    assert "not a readable checkpoint" in error_line(capsys, "train")
    assert gmk("sample", out) == 2
    assert "not a readable checkpoint" in error_line(capsys, "sample")
    after = {path.name: path.read_bytes() for path in out.iterdir()}
    assert after == {**before, "checkpoint.pt": before["checkpoint.pt"][:1000]}


def test_a_checkpoint_of_another_config_is_refused(image_run, tmp_path, capsys):
    import torch

    out = tmp_path / "run"
    shutil.copytree(image_run, out)
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    state["config"]["channels"] *= 2
    torch.save(state, out / "checkpoint.pt")
    assert gmk("sample", out) == 2
    assert "EMA weights do not match" in error_line(capsys, "sample")
    state["config"]["bogus_field"] = 1
    torch.save(state, out / "checkpoint.pt")
    assert gmk("train", "gated_pixelcnn", "--resume", "--steps", "4", "--out", out) == 2
    assert "does not fit" in error_line(capsys, "train")
    torch.save({"weights": torch.zeros(2)}, out / "checkpoint.pt")
    assert gmk("sample", out) == 2
    assert "not a gmkernels training checkpoint" in error_line(capsys, "sample")


def test_sample_output_must_fit_the_kind(image_run, tmp_path, capsys):
    assert gmk("sample", image_run, "--out", tmp_path / "x.wav") == 2
    assert "written as .png" in error_line(capsys, "sample")
    assert gmk("sample", tmp_path / "missing") == 2
    assert "no checkpoint there" in error_line(capsys, "sample")


def test_no_traceback_from_the_command_line(tmp_path):
    result = subprocess.run([sys.executable, "-m", "gmkernels", "train", "bogus", "--out", str(tmp_path)],
                            capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    from gmkernels.models import MODELS

    assert result.stderr.strip().splitlines() == ["gmk train: error: unknown model 'bogus': expected one of "
                                                  + ", ".join(MODELS)]


class Relaunched(Exception):
    pass


@pytest.mark.parametrize("command", ["train", "sample"])
def test_train_and_sample_restart_under_passive_openmp(command, monkeypatch):
    """OpenMP reads its wait policy when torch loads it: the command sets it and starts itself again."""
    calls = []

    def execv(path, args):
        calls.append((path, args, os.environ.get("OMP_WAIT_POLICY")))
        raise Relaunched

    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    monkeypatch.setattr(os, "execv", execv)
    monkeypatch.setattr(sys, "argv", ["gmk", command, "runs/x"])
    with pytest.raises(Relaunched):
        cli.run_as_program()
    assert calls == [(sys.executable, [sys.executable, "-m", "gmkernels", command, "runs/x"], "PASSIVE")]


@pytest.mark.parametrize(("argv", "policy"), [(["gmk", "info"], None), (["gmk", "train", "x"], "ACTIVE")])
def test_other_commands_and_a_set_policy_run_at_once(argv, policy, monkeypatch):
    monkeypatch.setattr(os, "execv", lambda *args: pytest.fail("restarted"))
    monkeypatch.setattr(cli, "main", lambda: 7)
    monkeypatch.setattr(sys, "argv", argv)
    if policy is None:
        monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    else:
        monkeypatch.setenv("OMP_WAIT_POLICY", policy)
    assert cli.run_as_program() == 7


def test_set_overrides_the_model_config_and_is_kept_on_resume(tmp_path, capsys):
    import torch

    out = tmp_path / "glow"
    assert gmk("train", "glow", "--steps", "1", "--samples", "0", "--out", out, "--set", "reversible=true",
               "--set", "steps_per_level=2", *TINY) == 0
    state = torch.load(out / "checkpoint.pt", weights_only=False)
    assert state["config"]["reversible"] is True and state["config"]["steps_per_level"] == 2
    capsys.readouterr()
    assert gmk("train", "glow", "--resume", "--steps", "2", "--out", out, "--set", "steps_per_level=3",
               *TINY) == 2
    assert "--set cannot change" in error_line(capsys, "train")
    assert gmk("train", "glow", "--resume", "--steps", "2", "--samples", "0", "--out", out, "--set",
               "reversible=true", "--set", "steps_per_level=2", *TINY) == 0
