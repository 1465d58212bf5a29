"""vqgpt.checkpoints, the one owner of what both trainers do with their run folders: atomic
checkpoints, the schedules as JSON, keep semantics, the metrics log on resume, the NaN stop."""

import json

import pytest
import torch
from accelerate import Accelerator
from transformers import get_cosine_with_min_lr_schedule_with_warmup

from vqgpt import checkpoints as ckpt
from vqgpt.atomic import write_folder


@pytest.fixture()
def accelerator():
    return Accelerator(cpu=True)  # models prepared by one test only


def _parts(accelerator, lr=0.1):
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    sched = get_cosine_with_min_lr_schedule_with_warmup(opt, 1, 10, min_lr_rate=0.1)
    model, opt = accelerator.prepare(model, opt)
    return model, opt, sched


def test_save_and_load_round_trip_with_schedules_and_extra_files(accelerator, tmp_path):
    model, opt, sched = _parts(accelerator)
    model(torch.ones(4, 3)).sum().backward()
    opt.step(), sched.step(), sched.step()
    saved_weights = {k: v.clone() for k, v in model.state_dict().items()}
    path = ckpt.save_checkpoint(accelerator, tmp_path / "ck", 2, {"note": "x"}, keep=2, schedulers=[sched],
                                write_extra=lambda folder: (folder / "extra.txt").write_text("mine"))
    assert path == tmp_path / "ck" / "step_2" and (path / "extra.txt").read_text() == "mine"
    state = json.loads((path / ckpt.STATE_FILE).read_text())
    assert state["step"] == 2 and state["note"] == "x" and len(state["schedulers"]) == 1
    assert not list((tmp_path / "ck").glob(".*"))  # no temporary folder left

    fresh = Accelerator(cpu=True)
    other, other_opt, other_sched = _parts(fresh)
    assert not all(torch.equal(v, saved_weights[k]) for k, v in other.state_dict().items())
    seen = []
    loaded = ckpt.load_checkpoint(fresh, path, [other_sched], load_extra=lambda f: seen.append(f.name))
    assert loaded["note"] == "x" and seen == ["step_2"]
    assert other_sched.state_dict()["last_epoch"] == sched.state_dict()["last_epoch"] == 2
    assert all(torch.equal(v, saved_weights[k]) for k, v in other.state_dict().items())
    assert ckpt.latest_checkpoint(tmp_path / "ck") == path


def test_keep_newest_and_zero_keeps_all(accelerator, tmp_path):
    model, opt, sched = _parts(accelerator)
    for step in (1, 2, 3):
        ckpt.save_checkpoint(accelerator, tmp_path / "two", step, {}, keep=2, schedulers=[sched])
        ckpt.save_checkpoint(accelerator, tmp_path / "all", step, {}, keep=0, schedulers=[sched])
    assert [s for s, _ in ckpt.list_checkpoints(tmp_path / "two")] == [2, 3]
    assert [s for s, _ in ckpt.list_checkpoints(tmp_path / "all")] == [1, 2, 3]
    (tmp_path / "two" / ".step_4.tmp").mkdir()  # a save killed half-way is never a checkpoint
    (tmp_path / "two" / "step_5").mkdir()  # nor a folder without trainer_state.json
    assert ckpt.latest_checkpoint(tmp_path / "two").name == "step_3"


def test_damaged_or_planted_files_are_one_line(accelerator, tmp_path):
    model, opt, sched = _parts(accelerator)
    path = ckpt.save_checkpoint(accelerator, tmp_path, 1, {}, keep=1, schedulers=[sched])
    (path / "custom_checkpoint_0.pkl").write_bytes(b"planted")
    with pytest.raises(ValueError, match="never writes and will not load"):
        ckpt.load_checkpoint(accelerator, path, [sched])
    (path / "custom_checkpoint_0.pkl").unlink()
    (path / ckpt.STATE_FILE).write_text("{")
    with pytest.raises(ValueError, match="cannot resume: trainer_state.json in .* is damaged"):
        ckpt.load_checkpoint(accelerator, path, [sched])


def test_metrics_log_reads_as_one_run_after_a_resume(tmp_path):
    log = ckpt.MetricsLog(tmp_path / "metrics.jsonl")
    log.start(0)
    for step in (1, 2, 3, 4):
        log.write({"step": step, "split": "train", "loss": 1.0 / step})
    log.write({"step": 4, "split": "validation", "final": True})
    log.start(2)  # resumed from the step-2 checkpoint: what came after it is redone
    assert [(r["step"], r["split"]) for r in log.records()] == [(1, "train"), (2, "train")]
    log.start(0)  # a fresh run starts an empty log
    assert log.records() == []
    ckpt.MetricsLog(tmp_path / "other.jsonl", enabled=False).write({"step": 1})  # not the main process
    assert not (tmp_path / "other.jsonl").exists()


def test_divergence_stops_with_the_last_good_checkpoint_and_sigterm_asks_for_one(accelerator, tmp_path):
    import os
    import signal

    with ckpt.StepGuard(accelerator, tmp_path, "prior") as guard:
        assert guard.check(0.5, 3) is False  # a finite loss, no signal: go on
        with pytest.raises(FloatingPointError, match="the prior's loss became nan at step 3.*no checkpoint was written"):
            guard.check(float("nan"), 3)
        os.kill(os.getpid(), signal.SIGTERM)  # inside the guard SIGTERM only sets a flag
        assert guard.check(0.5, 4) is True
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the previous handler is back


def test_write_folder_replaces_whole_or_not_at_all(tmp_path):
    target = tmp_path / "prior"
    with write_folder(target) as tmp:
        (tmp / "a.txt").write_text("old")
    with pytest.raises(RuntimeError):
        with write_folder(target) as tmp:
            (tmp / "a.txt").write_text("half")
            raise RuntimeError("killed while writing")
    assert (target / "a.txt").read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["prior"]


def test_an_rng_state_that_does_not_restore_completely_stops_the_resume(accelerator, tmp_path):
    model, opt, sched = _parts(accelerator)
    path = ckpt.save_checkpoint(accelerator, tmp_path, 1, {}, keep=1, schedulers=[sched])
    torch.save({"step": 1}, path / "random_states_0.pkl")  # unpickles fine, restores nothing
    with pytest.raises(ValueError, match="random_states_0.pkl in .* is damaged .*lacks random_state"):
        ckpt.load_checkpoint(accelerator, path, [sched])


def test_a_schedule_state_that_does_not_restore_completely_stops_the_resume(accelerator, tmp_path):
    model, opt, sched = _parts(accelerator)
    path = ckpt.save_checkpoint(accelerator, tmp_path, 1, {}, keep=1, schedulers=[sched])
    state = json.loads((path / ckpt.STATE_FILE).read_text())
    del state["schedulers"][0]["last_epoch"]
    (path / ckpt.STATE_FILE).write_text(json.dumps(state))
    with pytest.raises(ValueError, match="the schedule state in .* is damaged .*lacks last_epoch"):
        ckpt.load_checkpoint(accelerator, path, [sched])
