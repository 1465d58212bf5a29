"""Training the prior: smoke run, exact resume (steps, LR schedule, data order, RNG), refusals."""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from vqgpt.prior import PriorConfig, PriorTrainConfig, load_prior, train_prior, write_token_dataset
from vqgpt.prior.train import param_groups

MODEL = PriorConfig(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64, dropout=0.1)
TRAIN = PriorTrainConfig(batch_size=8, max_steps=2, warmup_steps=1, learning_rate=3e-3, eval_every=1, log_every=1,
                         checkpoint_every=0, label_dropout=0.2, select_sampling=False)


def tokens(path, fingerprint: str = "fp-A", k: int = 16, seed: int = 0):
    """A small learnable token dataset: class c draws codes around 4·c (+ flips)."""
    rng = np.random.default_rng(seed)

    def split(n):
        labels = rng.integers(0, 3, n)
        codes = (labels[:, None, None] * 4 + rng.integers(0, 4, (n, 3, 3))) % k
        return codes, labels

    write_token_dataset(path, {"train": split(48), "validation": split(16)}, k, ("a", "b", "c"), fingerprint)
    return path


def records(out, split=None):
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if split is None or r["split"] == split]


def test_two_step_smoke_run_writes_a_loadable_prior(tmp_path):
    calls = []
    summary = train_prior(MODEL, dataclasses.replace(TRAIN, sample_every=1), tokens(tmp_path / "tok"), tmp_path / "out",
                          sample_callback=lambda codes, step: calls.append((codes.clone(), step)))
    out = tmp_path / "out"
    assert summary["steps"] == 2 and math.isfinite(summary["val_bits_per_code"]) and summary["train_tokens_per_s"] > 0
    assert [r["step"] for r in records(out, "train")] == [1, 2]
    assert [r["step"] for r in records(out, "validation")] == [1, 2]
    assert (out / "loss_curve.png").stat().st_size > 1000
    assert (out / "checkpoints" / "step_2" / "trainer_state.json").is_file()
    model, spec = load_prior(out)
    assert spec.tokenizer_fingerprint == "fp-A" and spec.num_classes == 3
    assert [step for _, step in calls] == [1, 2, 2]  # every step, then the final model
    assert all(c.shape == (3, 3, 3) and c.max() < 16 for c, _ in calls)
    # held-out bits per code are a plain cross-entropy over code positions: recompute it
    from vqgpt.prior import load_token_dataset
    from vqgpt.prior.train import sequence_nll

    val = torch.stack([s for s in load_token_dataset(tmp_path / "tok").validation])
    with torch.no_grad():
        bits = sequence_nll(model, val, spec).mean().item() / math.log(2)
    assert bits == pytest.approx(summary["val_bits_per_code"], rel=1e-4)


def test_training_lowers_held_out_loss(tmp_path):
    cfg = dataclasses.replace(TRAIN, max_steps=40, eval_every=40, warmup_steps=4)
    summary = train_prior(MODEL, cfg, tokens(tmp_path / "tok"), tmp_path / "out")
    assert summary["val_bits_per_code"] < math.log2(16) - 1.0  # uniform over 16 codes is 4 bits


def test_resume_continues_step_count_schedule_and_data_exactly(tmp_path):
    cfg = dataclasses.replace(TRAIN, max_steps=6, checkpoint_every=3, keep_checkpoints=5, eval_every=3)
    tok = tokens(tmp_path / "tok")
    straight = tmp_path / "straight"
    train_prior(MODEL, cfg, tok, straight)
    expected = {r["step"]: r for r in records(straight, "train")}

    # the same run, interrupted after step 3: drop everything later, then resume
    shutil.rmtree(straight / "checkpoints" / "step_6")
    resumed = train_prior(MODEL, cfg, tok, straight, resume=True)
    assert resumed["steps"] == 6
    got = {r["step"]: r for r in records(straight, "train")}
    assert sorted(got) == [1, 2, 3, 4, 5, 6]
    for step in (4, 5, 6):
        assert got[step]["lr"] == pytest.approx(expected[step]["lr"], rel=1e-9)
        assert got[step]["loss"] == pytest.approx(expected[step]["loss"], rel=1e-5)
    assert got[4]["lr"] != got[5]["lr"]  # the schedule moves, so the comparison above can fail


def test_resume_with_more_steps_continues_the_count(tmp_path):
    tok = tokens(tmp_path / "tok")
    train_prior(MODEL, TRAIN, tok, tmp_path / "out")
    summary = train_prior(MODEL, dataclasses.replace(TRAIN, max_steps=4), tok, tmp_path / "out", resume=True)
    assert summary["steps"] == 4
    assert [r["step"] for r in records(tmp_path / "out", "train")] == [1, 2, 3, 4]
    before = (tmp_path / "out" / "metrics.jsonl").read_text()
    again = train_prior(MODEL, dataclasses.replace(TRAIN, max_steps=4), tok, tmp_path / "out", resume=True)
    assert again["steps"] == 4 and math.isfinite(again["val_bits_per_code"])  # finished: nothing more to do
    assert (tmp_path / "out" / "metrics.jsonl").read_text() == before


def test_resume_refuses_tokens_of_another_tokenizer_or_codebook(tmp_path):
    train_prior(MODEL, TRAIN, tokens(tmp_path / "tok"), tmp_path / "out")
    more = dataclasses.replace(TRAIN, max_steps=3)
    with pytest.raises(ValueError, match="tokenizer fp-B"):
        train_prior(MODEL, more, tokens(tmp_path / "tokB", fingerprint="fp-B"), tmp_path / "out", resume=True)
    with pytest.raises(ValueError, match="codebook size 32"):
        train_prior(MODEL, more, tokens(tmp_path / "tokK", k=32), tmp_path / "out", resume=True)
    with pytest.raises(ValueError, match="different model settings"):
        train_prior(dataclasses.replace(MODEL, num_layers=3), more, tmp_path / "tok", tmp_path / "out", resume=True)


def test_output_folder_rules(tmp_path):
    tok = tokens(tmp_path / "tok")
    train_prior(MODEL, TRAIN, tok, tmp_path / "out")
    with pytest.raises(FileExistsError, match="`overwrite`"):
        train_prior(MODEL, TRAIN, tok, tmp_path / "out")
    (tmp_path / "out" / "notes.txt").write_text("mine")  # a user's own file beside the prior
    before = load_prior(tmp_path / "out")[1]

    def killed(codes, step):  # dies during the new run, after its first samples
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_prior(MODEL, dataclasses.replace(TRAIN, sample_every=1), tok, tmp_path / "out", overwrite=True,
                    sample_callback=killed)
    assert load_prior(tmp_path / "out")[1] == before  # the old prior is still whole
    assert train_prior(MODEL, TRAIN, tok, tmp_path / "out", overwrite=True)["steps"] == 2
    assert (tmp_path / "out" / "notes.txt").read_text() == "mine"
    with pytest.raises(FileNotFoundError, match="nothing to resume"):
        train_prior(MODEL, TRAIN, tok, tmp_path / "fresh", resume=True)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        train_prior(MODEL, TRAIN, tmp_path / "missing", tmp_path / "o2")
    (tmp_path / "precious").mkdir()
    (tmp_path / "precious" / "notes.txt").write_text("keep me")
    with pytest.raises(ValueError, match="does not look like a prior"):
        train_prior(MODEL, TRAIN, tok, tmp_path / "precious", overwrite=True)
    assert (tmp_path / "precious" / "notes.txt").is_file()


def test_early_stopping_keeps_the_best_model(tmp_path):
    # a learning rate far too high makes held-out loss rise after the first evaluations
    cfg = dataclasses.replace(TRAIN, max_steps=30, learning_rate=0.5, warmup_steps=0, early_stopping_patience=2,
                              grad_clip=0.0)
    summary = train_prior(MODEL, cfg, tokens(tmp_path / "tok"), tmp_path / "out")
    val = records(tmp_path / "out", "validation")
    assert summary["stopped_early"] and summary["steps"] < 30
    best = min(val, key=lambda r: r["bits_per_code"])
    assert summary["best_step"] == best["step"] and summary["val_bits_per_code"] == pytest.approx(best["bits_per_code"])
    from vqgpt.prior import load_token_dataset
    from vqgpt.prior.train import sequence_nll

    model, spec = load_prior(tmp_path / "out")
    seqs = torch.stack([s for s in load_token_dataset(tmp_path / "tok").validation])
    with torch.no_grad():
        bits = sequence_nll(model, seqs, spec).mean().item() / math.log(2)
    assert bits == pytest.approx(best["bits_per_code"], rel=1e-4)  # the saved model is the best one, not the last


def test_weight_decay_spares_norms_biases_and_embeddings():
    from vqgpt.prior import PriorSpec, build_prior_model

    model = build_prior_model(MODEL, PriorSpec(codebook_size=16, grid=(3, 3), class_names=("a",)))
    decay, no_decay = param_groups(model, 0.1)
    names = {id(p): n for n, p in model.named_parameters()}
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all("norm" not in names[id(p)] and "embed" not in names[id(p)] for p in decay["params"])
    assert any("embed_tokens" in names[id(p)] for p in no_decay["params"])
    assert any("norm" in names[id(p)] for p in no_decay["params"])
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))


def test_gradient_accumulation_counts_optimizer_steps(tmp_path):
    # 48 rows / batch 8 = 6 micro-batches per epoch; 4 steps × 4 micro-batches cross an epoch end
    cfg = dataclasses.replace(TRAIN, max_steps=4, gradient_accumulation_steps=4, eval_every=4)
    summary = train_prior(MODEL, cfg, tokens(tmp_path / "tok"), tmp_path / "out")
    lrs = [r["lr"] for r in records(tmp_path / "out", "train")]
    assert summary["steps"] == 4 and len(lrs) == 4 and len(set(lrs)) == 4
    optim = torch.load(tmp_path / "out" / "checkpoints" / "step_4" / "optimizer.bin", weights_only=True)
    assert {float(s["step"]) for s in optim["state"].values()} == {4.0}  # no extra step at the epoch end


def test_a_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    import vqgpt.prior.train as pt

    real, calls = pt.sequence_nll, []

    def poisoned(model, batch, spec, inputs=None):
        nll = real(model, batch, spec, inputs)
        calls.append(model.training)
        return nll * float("nan") if sum(calls) == 3 else nll  # the third training forward diverges

    monkeypatch.setattr(pt, "sequence_nll", poisoned)
    cfg = dataclasses.replace(TRAIN, max_steps=5, checkpoint_every=2, eval_every=10)
    with pytest.raises(FloatingPointError, match="step 3.*step_2"):
        train_prior(MODEL, cfg, tokens(tmp_path / "tok"), tmp_path / "out")
    assert sorted(p.name for p in (tmp_path / "out" / "checkpoints").glob("step_*")) == ["step_2"]
    assert not (tmp_path / "out" / "vqgpt_prior.json").exists()


def test_label_dropout_draws_differ_per_process_and_add_up_to_one_process():
    from vqgpt.prior import PriorSpec
    from vqgpt.prior.train import drop_labels

    spec = PriorSpec(16, (2, 2), ("a", "b"))
    batch = torch.zeros(8, 5, dtype=torch.long)
    batch[:, 0] = spec.class_token_offset  # class 0 everywhere
    whole = drop_labels(batch, spec, 0.5, seed=7, row_offset=0, global_rows=8)[:, 0]
    ranks = [drop_labels(batch[:4], spec, 0.5, seed=7, row_offset=4 * r, global_rows=8)[:, 0] for r in (0, 1)]
    assert torch.equal(torch.cat(ranks), whole)  # 2 processes × 4 rows drop what 1 × 8 rows drops
    assert not torch.equal(ranks[0], ranks[1])
    assert set(whole.tolist()) == {spec.class_token_offset, spec.null_token_id}
    assert torch.equal(drop_labels(batch, spec, 0.5, seed=7, global_rows=8)[:, 0], whole)  # reproducible


def test_token_dropout_corrupts_input_codes_only_and_adds_up_across_processes():
    from vqgpt.prior import PriorSpec
    from vqgpt.prior.train import drop_tokens

    spec = PriorSpec(16, (8, 8), ("a", "b"))
    g = torch.Generator().manual_seed(0)
    batch = torch.cat([torch.full((64, 1), spec.class_token_offset), torch.randint(16, (64, 64), generator=g)], 1)
    inputs = drop_tokens(batch, spec, 0.25, seed=3, row_offset=0, global_rows=64)
    assert inputs.shape == batch[:, :-1].shape
    assert torch.equal(inputs[:, 0], batch[:, 0])  # the condition token stays
    changed = (inputs[:, 1:] != batch[:, 1:-1]).float().mean().item()
    assert 0.25 * 15 / 16 - 0.03 < changed < 0.25 * 15 / 16 + 0.03  # a random code equals the true one 1/16 of the time
    assert int(inputs[:, 1:].max()) < spec.codebook_size  # only codes, never a class or null token
    ranks = [drop_tokens(batch[32 * r:32 * (r + 1)], spec, 0.25, seed=3, row_offset=32 * r, global_rows=64) for r in (0, 1)]
    assert torch.equal(torch.cat(ranks), inputs)
    assert torch.equal(drop_tokens(batch, spec, 0.0, seed=3), batch[:, :-1])


def test_token_dropout_changes_training(tmp_path):
    tok = tokens(tmp_path / "tok")
    plain = train_prior(MODEL, dataclasses.replace(TRAIN, max_steps=3), tok, tmp_path / "plain")
    noisy = train_prior(MODEL, dataclasses.replace(TRAIN, max_steps=3, token_dropout=0.3), tok, tmp_path / "noisy")
    assert math.isfinite(noisy["val_bits_per_code"])
    assert noisy["train_bits_per_code"] != pytest.approx(plain["train_bits_per_code"], rel=1e-6)
    with pytest.raises(ValueError, match="token_dropout"):
        dataclasses.replace(TRAIN, token_dropout=1.0)


def test_a_kill_while_the_new_prior_is_published_leaves_the_old_one_loadable(tmp_path, monkeypatch):
    """`train-prior --overwrite` publishes the new prior by swapping in a whole new folder (its files,
    the logs and the user's files hard-linked over): killed just before that swap, the old prior
    loads as it was; after it, the new one with everything else in place."""
    from safetensors.torch import load_file

    import vqgpt.atomic

    tok = tokens(tmp_path / "tok")
    out = tmp_path / "out"
    train_prior(MODEL, TRAIN, tok, out)
    (out / "notes.txt").write_text("mine")
    old_weights = load_file(str(out / "model.safetensors"))
    real_replace = vqgpt.atomic.replace_dir

    def killed_at_the_swap(new, path):
        if Path(path) == out:
            raise KeyboardInterrupt  # the process dies with the new folder complete but not yet in place
        real_replace(new, path)

    monkeypatch.setattr(vqgpt.atomic, "replace_dir", killed_at_the_swap)
    with pytest.raises(KeyboardInterrupt):
        train_prior(MODEL, dataclasses.replace(TRAIN, seed=5), tok, out, overwrite=True)
    monkeypatch.undo()
    model, spec = load_prior(out)  # the old prior, whole
    assert all(torch.equal(v, old_weights[k]) for k, v in load_file(str(out / "model.safetensors")).items())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "tok"]  # nothing half-written beside it
    train_prior(MODEL, dataclasses.replace(TRAIN, seed=5), tok, out, overwrite=True)
    new = load_file(str(out / "model.safetensors"))
    assert not all(torch.equal(v, old_weights[k]) for k, v in new.items())
    assert (out / "notes.txt").read_text() == "mine" and (out / "metrics.jsonl").is_file()
