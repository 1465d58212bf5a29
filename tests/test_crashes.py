"""Crashes lose nothing: SIGKILL at a random step of either trainer (or of tokenize), then
`--resume` (or the same command again), gives what an uninterrupted run gives, bit for bit;
a damaged checkpoint stops the resume with one line; nothing in a checkpoint runs code.

Every run here is a real `vqgpt` process (`python -m vqgpt`), killed with SIGKILL."""

from __future__ import annotations

import os
import pickle
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

pytestmark = pytest.mark.slow

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
TOKENIZER_ARGS = ["--preset", "tiny", "--set", "train.max_steps=30", "--set", "train.checkpoint_every=1",
                  "--set", "train.keep_checkpoints=3", "--set", "train.use_ema=true", "--set", "train.ema_decay=0.9",
                  "--set", "train.sample_every=0", "--set", "train.log_every=5"]
PRIOR_ARGS = ["--preset", "tiny", "--set", "train.max_steps=30", "--set", "train.checkpoint_every=1",
              "--set", "train.keep_checkpoints=3", "--set", "train.eval_every=10", "--set", "train.label_dropout=0.3"]


def vqgpt(*args, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", "vqgpt", *map(str, args)], capture_output=True, text=True,
                            env=ENV, timeout=600)
    if check:
        assert result.returncode == 0, result.stderr[-3000:]
    return result


def kill_at_checkpoint(args: list, ckpt_root: Path, step: int) -> None:
    """Start `vqgpt args`, SIGKILL it as soon as checkpoint `step_<step>` exists."""
    proc = subprocess.Popen([sys.executable, "-m", "vqgpt", *map(str, args)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=ENV)
    deadline = time.monotonic() + 300
    while not (ckpt_root / f"step_{step}").is_dir():
        assert proc.poll() is None, "the run ended before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL


def same_weights(a: Path, b: Path) -> None:
    wa, wb = load_file(str(a)), load_file(str(b))
    assert wa.keys() == wb.keys()
    for name in wa:
        assert wa[name].equal(wb[name]), name


def only_complete_checkpoints(root: Path) -> None:
    for step_dir in root.glob("step_*"):
        assert (step_dir / "trainer_state.json").is_file(), step_dir


def test_tokenizer_killed_then_resumed_is_bit_identical(image_folder, tmp_path):
    vqgpt("train-tokenizer", "--data", image_folder, "--out", tmp_path / "straight", *TOKENIZER_ARGS)
    killed = tmp_path / "killed"
    args = ["train-tokenizer", "--data", image_folder, "--out", killed, *TOKENIZER_ARGS]
    kill_at_checkpoint(args, killed / "checkpoints", random.Random(1).randint(3, 20))
    assert not (killed / "model.safetensors").exists()  # a killed run never looks finished
    only_complete_checkpoints(killed / "checkpoints")
    vqgpt(*args, "--resume")
    same_weights(tmp_path / "straight" / "model.safetensors", killed / "model.safetensors")  # EMA weights


def test_prior_killed_then_resumed_is_bit_identical(tiny_run, tmp_path):
    tokens = tiny_run / "tokens"
    vqgpt("train-prior", "--tokens", tokens, "--out", tmp_path / "straight", *PRIOR_ARGS)
    killed = tmp_path / "killed"
    args = ["train-prior", "--tokens", tokens, "--out", killed, *PRIOR_ARGS]
    kill_at_checkpoint(args, killed / "checkpoints", random.Random(2).randint(3, 20))
    assert not (killed / "vqgpt_prior.json").exists()
    only_complete_checkpoints(killed / "checkpoints")
    vqgpt(*args, "--resume")
    same_weights(tmp_path / "straight" / "model.safetensors", killed / "model.safetensors")


class _Planted:
    """Unpickling this runs code: it writes a marker file."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (Path(self.marker), "code ran"))


def _latest(root: Path) -> Path:
    return max(root.glob("step_*"), key=lambda p: int(p.name[5:]))


def test_damaged_or_planted_checkpoint_files(tiny_run, tmp_path):
    out = tmp_path / "prior"
    args = ["train-prior", "--tokens", tiny_run / "tokens", "--out", out, *PRIOR_ARGS[:2],
            "--set", "train.max_steps=6", "--set", "train.checkpoint_every=3", "--set", "train.eval_every=3"]
    vqgpt(*args)
    latest = _latest(out / "checkpoints")
    marker = tmp_path / "pwned"
    # files accelerate would read as arbitrary pickles if we registered objects for checkpointing
    for name in ("custom_checkpoint_0.pkl", "custom_checkpoint_1.pkl"):
        (latest / name).write_bytes(pickle.dumps(_Planted(str(marker))))
    resume = [*args[:-6], "--set", "train.max_steps=9", "--set", "train.checkpoint_every=3", "--set",
              "train.eval_every=3", "--resume"]
    refused = vqgpt(*resume, check=False)
    assert not marker.exists(), "--resume ran code from the checkpoint folder"
    assert refused.returncode == 2 and "custom_checkpoint_0.pkl" in refused.stderr, refused.stderr
    for name in ("custom_checkpoint_0.pkl", "custom_checkpoint_1.pkl"):
        (latest / name).unlink()
    vqgpt(*resume)

    latest = _latest(out / "checkpoints")
    rng = latest / "random_states_0.pkl"
    rng.write_bytes(rng.read_bytes()[: len(rng.read_bytes()) // 2])  # truncated
    result = vqgpt(*args[:-6], "--set", "train.max_steps=12", "--resume", check=False)
    assert result.returncode == 2 and "random_states_0.pkl" in result.stderr and "damaged" in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_tokenizer_damaged_optimizer_state_is_one_line(image_folder, tmp_path):
    out = tmp_path / "tok"
    args = ["train-tokenizer", "--data", image_folder, "--out", out, "--preset", "tiny"]
    kill_args = [*args, "--set", "train.max_steps=30", "--set", "train.checkpoint_every=2"]
    kill_at_checkpoint(kill_args, out / "checkpoints", 4)
    latest = _latest(out / "checkpoints")
    (latest / "optimizer.bin").write_bytes(b"\x80\x04garbage")
    result = vqgpt(*kill_args, "--resume", check=False)
    assert result.returncode == 2 and "damaged" in result.stderr and "Traceback" not in result.stderr, result.stderr


def test_tokenize_killed_then_rerun_is_identical(tiny_run, tmp_path):
    """Tokenize in shards of 4 images: killed after its first shard, the same command finishes the
    dataset; it equals an uninterrupted run, and the killed folder never loads as complete."""
    import datasets

    from vqgpt.pipeline.data import load_images

    folder = tmp_path / "imgs"
    folder.mkdir()
    digits = load_images("digits", 16, 1, split="all")
    from vqgpt.pipeline.data.images import to_pil

    for i in range(120):
        to_pil(digits[i]["image"][None])[0].save(folder / f"{i:03d}.png")
    tok = tiny_run / "tokenizer"
    vqgpt("tokenize", "--tokenizer", tok, "--data", folder, "--out", tmp_path / "straight", "--shard-size", 4)
    killed = tmp_path / "killed"
    args = ["tokenize", "--tokenizer", tok, "--data", folder, "--out", killed, "--shard-size", 4, "--batch-size", 2]
    proc = subprocess.Popen([sys.executable, "-m", "vqgpt", *map(str, args)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=ENV)
    partial = killed / ".partial"
    while not list(partial.glob("*.json")) or len(list(partial.glob("train-*.json"))) < 2:
        assert proc.poll() is None
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    result = vqgpt("train-prior", "--tokens", killed, "--out", tmp_path / "p", "--preset", "tiny", check=False)
    assert result.returncode == 2 and "unfinished" in result.stderr, result.stderr
    vqgpt(*args)
    a, b = datasets.load_from_disk(str(tmp_path / "straight")), datasets.load_from_disk(str(killed))
    for split in ("train", "validation"):
        assert a[split]["source"] == b[split]["source"]
        assert (a[split].with_format("numpy")[:]["codes"] == b[split].with_format("numpy")[:]["codes"]).all()


def terminate_after_first_log(args: list, metrics: Path) -> tuple[int, str]:
    """Start `vqgpt args`, send SIGTERM (what a cluster scheduler sends) once it has logged a step."""
    proc = subprocess.Popen([sys.executable, "-m", "vqgpt", *map(str, args)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, env=ENV)
    deadline = time.monotonic() + 300
    while not (metrics.is_file() and metrics.read_text().strip()):
        assert proc.poll() is None, "the run ended before it could be signalled"
        assert time.monotonic() < deadline
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    return proc.returncode, err


@pytest.mark.parametrize("stage", ["tokenizer", "prior"])
def test_sigterm_checkpoints_the_step_in_flight_and_resume_is_bit_identical(stage, image_folder, tiny_run, tmp_path):
    common = ["--preset", "tiny", "--set", "train.max_steps=300", "--set", "train.checkpoint_every=0",
              "--set", "train.log_every=2"]
    if stage == "tokenizer":
        args = ["train-tokenizer", "--data", image_folder, *common, "--set", "train.sample_every=0"]
        final = "model.safetensors"
    else:
        args = ["train-prior", "--tokens", tiny_run / "tokens", *common, "--set", "train.eval_every=50"]
        final = "model.safetensors"
    vqgpt(*args, "--out", tmp_path / "straight")
    stopped = tmp_path / "stopped"
    code, err = terminate_after_first_log([*args, "--out", stopped], stopped / "metrics.jsonl")
    lines = err.strip().splitlines()
    assert code == 143, err[-2000:]
    message = next(line for line in lines if "SIGTERM" in line)
    assert f"the {stage}'s checkpoint step_" in message and "continue with --resume" in message and "Traceback" not in err
    step = int(message.split("at step ")[1].split(":")[0])
    assert 0 < step < 300 and (stopped / "checkpoints" / f"step_{step}" / "trainer_state.json").is_file()
    assert not (stopped / final).exists()  # a stopped run never looks finished
    vqgpt(*args, "--out", stopped, "--resume")
    same_weights(tmp_path / "straight" / final, stopped / final)
