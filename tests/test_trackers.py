"""Experiment trackers through accelerate (`--report-to`): a run logged to TensorBoard is read back
from its event file — scalars under stable names and an image — and a tracker that is asked for but
not installed is one error line before training starts."""

from __future__ import annotations

import importlib.util

import pytest

from vqgpt.pipeline.cli import main


def _events(folder):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (events,) = {p.parent for p in folder.glob("*/events.out.tfevents.*")}  # the run (hparams: a subfolder)
    accumulator = EventAccumulator(str(events), size_guidance={"images": 0, "scalars": 0})
    accumulator.Reload()
    return accumulator


def test_both_trainers_log_to_tensorboard(capsys, image_folder, tiny_run, tmp_path):
    tok = tmp_path / "tok"
    assert main(["train-tokenizer", "--data", str(image_folder), "--out", str(tok), "--preset", "tiny",
                 "--set", "train.max_steps=2", "--report-to", "tensorboard"]) == 0
    run = _events(tok / "trackers")
    scalars, images = run.Tags()["scalars"], run.Tags()["images"]
    for tag in ("train/loss", "train/lr", "train/rec_loss", "train/batch_usage", "train/batch_perplexity",
                "validation/psnr", "validation/codebook_usage"):
        assert tag in scalars, (tag, scalars)
    assert [e.step for e in run.Scalars("train/loss")] == [1, 2]
    assert "reconstructions" in images and run.Images("reconstructions")[-1].width > 0

    prior = tmp_path / "prior"
    assert main(["train-prior", "--tokens", str(tiny_run / "tokens"), "--out", str(prior), "--preset", "tiny",
                 "--tokenizer", str(tiny_run / "tokenizer"), "--set", "train.max_steps=4", "--set", "train.eval_every=2",
                 "--set", "train.sample_every=2", "--set", "train.log_every=1", "--report-to", "tensorboard"]) == 0
    run = _events(prior / "trackers")
    assert {"train/bits_per_code", "train/lr", "validation/bits_per_code"} <= set(run.Tags()["scalars"])
    assert [e.step for e in run.Scalars("validation/bits_per_code")] == [2, 4]
    assert "samples" in run.Tags()["images"]
    assert (prior / "metrics.jsonl").is_file() and (prior / "loss_curve.png").is_file()  # written as before


@pytest.mark.parametrize("name, says", [("wandb", "the wandb package is not installed (pip install wandb)"),
                                        ("mlflow-ish", "'mlflow-ish' is not a tracker; choose from none, tensorboard")])
def test_a_missing_or_unknown_tracker_is_one_line_before_training(capsys, image_folder, tmp_path, name, says):
    if name == "wandb" and importlib.util.find_spec("wandb") is not None:
        pytest.skip("wandb is installed here")
    code = main(["train-tokenizer", "--data", str(image_folder), "--out", str(tmp_path / "t"), "--preset", "tiny",
                 "--set", "train.max_steps=2", "--report-to", name])
    err = capsys.readouterr().err.strip()
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 2 and len(errors) == 1 and says in errors[0] and "Traceback" not in err, err
    assert not (tmp_path / "t").exists()  # refused before anything was written
