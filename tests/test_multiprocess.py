"""Several processes for real: two CPU processes (gloo) started the way the README documents,

    ACCELERATE_USE_CPU=1 torchrun --standalone --nproc_per_node 2 -m vqgpt VERB ...

give what one process gives: the same token dataset, the same prior weights for the same
global batch (2 × B vs 1 × 2B), and the same tokenizer (k-means init, dead-code restarts, usage
statistics and the adaptive GAN weight are computed over the global batch)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

pytestmark = pytest.mark.slow

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "1", "HF_HUB_OFFLINE": "1",
       "HF_DATASETS_OFFLINE": "1"}


def launch(processes: int, *args) -> subprocess.CompletedProcess:
    if processes == 1:
        cmd = [sys.executable, "-m", "vqgpt"]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes),
               "-m", "vqgpt"]
    result = subprocess.run([*cmd, *map(str, args)], capture_output=True, text=True, env=ENV, timeout=900)
    assert result.returncode == 0, result.stderr[-4000:]
    return result


def max_difference(a: Path, b: Path) -> float:
    wa, wb = load_file(str(a)), load_file(str(b))
    assert wa.keys() == wb.keys()
    return max(float((wa[k].double() - wb[k].double()).abs().max()) if wa[k].numel() else 0.0 for k in wa)


def test_tokenize_with_two_processes_equals_one(tiny_run, image_folder, tmp_path):
    import datasets

    args = ["tokenize", "--tokenizer", tiny_run / "tokenizer", "--data", image_folder, "--shard-size", 3]
    launch(1, *args, "--out", tmp_path / "one")
    two = launch(2, *args, "--out", tmp_path / "two")
    assert two.stdout.count("token dataset written") == 1  # only the main process prints
    a, b = datasets.load_from_disk(str(tmp_path / "one")), datasets.load_from_disk(str(tmp_path / "two"))
    for split in ("train", "validation"):
        assert a[split]["source"] == b[split]["source"] and a[split]["label"] == b[split]["label"]
        assert (a[split].with_format("numpy")[:]["codes"] == b[split].with_format("numpy")[:]["codes"]).all()


def test_prior_with_two_processes_matches_one_with_the_same_global_batch(tiny_run, tmp_path):
    common = ["train-prior", "--tokens", tiny_run / "tokens", "--preset", "tiny", "--set", "train.max_steps=6",
              "--set", "train.label_dropout=0.5", "--set", "train.eval_every=3", "--set", "train.checkpoint_every=3"]
    launch(1, *common, "--out", tmp_path / "one", "--set", "train.batch_size=8")
    launch(2, *common, "--out", tmp_path / "two", "--set", "train.batch_size=4")
    assert max_difference(tmp_path / "one" / "model.safetensors", tmp_path / "two" / "model.safetensors") < 1e-5
    assert sorted(p.name for p in (tmp_path / "two" / "checkpoints").glob("step_*")) == ["step_3", "step_6"]


def test_tokenizer_with_two_processes_matches_one_with_the_same_global_batch(image_folder, tmp_path):
    common = ["train-tokenizer", "--data", image_folder, "--preset", "tiny", "--set", "train.max_steps=8",
              "--set", "train.disc_start=3", "--set", "model.restart_after_steps=2", "--set", "train.checkpoint_every=4"]
    launch(1, *common, "--out", tmp_path / "one", "--set", "train.batch_size=8")
    launch(2, *common, "--out", tmp_path / "two", "--set", "train.batch_size=4")
    diff = max_difference(tmp_path / "one" / "model.safetensors", tmp_path / "two" / "model.safetensors")
    assert diff < 1e-4, diff
    one = load_file(str(tmp_path / "one" / "model.safetensors"))
    two = load_file(str(tmp_path / "two" / "model.safetensors"))
    assert torch.equal(one["quantizer.steps_unused"], two["quantizer.steps_unused"])  # usage over the global batch
