"""The ``vqgpt`` command line end to end on tiny configs, and its answers to bad input."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vqgpt.pipeline.cli import main

TINY_TOKENIZER = ["--preset", "tiny", "--set", "train.max_steps=3"]


def run_cli(capsys, *args) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def assert_user_error(code: int, err: str, says: str, *also: str) -> None:
    """Exit code 2, one `error:` line and no traceback, and the line says what went wrong: it holds
    ``says`` and each of ``also`` (phrases of the message, not just any word)."""
    lines = [line for line in err.strip().splitlines() if line.startswith("error:")]
    assert code == 2, err
    assert len(lines) == 1 and "Traceback" not in err, err
    for needle in (says, *also):
        assert needle in lines[0], f"{needle!r} not in {lines[0]!r}"


# ------------------------------------------------------------------ stage 1 through the CLI


def test_train_tokenizer_and_reconstruct(capsys, image_folder, tmp_path):
    out = tmp_path / "tok"
    code, stdout, _ = run_cli(capsys, "train-tokenizer", "--data", image_folder, "--out", out, *TINY_TOKENIZER)
    assert code == 0
    assert (out / "config.json").is_file() and (out / "model.safetensors").is_file()
    assert "1 skipped" in stdout or "skipped 1" in stdout or "broken.png" in stdout
    png = tmp_path / "recon.png"
    code, stdout, _ = run_cli(capsys, "reconstruct", "--tokenizer", out, "--data", image_folder, "--out", png)
    assert code == 0 and png.is_file()
    assert "psnr=" in stdout and "ssim=" in stdout and "codebook_usage=" in stdout
    # A finished model is not overwritten without --overwrite.
    code, _, err = run_cli(capsys, "train-tokenizer", "--data", image_folder, "--out", out, *TINY_TOKENIZER)
    assert_user_error(code, err, f"{out} already holds a trained tokenizer; pass --overwrite to replace it")


@pytest.mark.parametrize(
    "extra, needle",
    [
        (["--set", "model.no_such_key=3"], "unknown config key 'model.no_such_key'"),
        (["--set", "model.image_size=17"], "image_size 17 is not divisible by the downsampling factor 2"),
        (["--preset", "nope"], "unknown preset 'nope'; presets: tiny, small, base"),
        (["--set", "train.max_steps=many"], "train.max_steps: expected an integer, got 'many'"),
        (["--set", "train.steps=3"], "config key 'train.steps' was renamed to 'train.max_steps'"),
        (["--set", "lr=0.1"], "config key 'lr' was renamed to 'learning_rate'"),
        (["--set", "train.grad_accum_steps=2"], "renamed to 'train.gradient_accumulation_steps'"),
    ],
)
def test_train_tokenizer_bad_config(capsys, image_folder, tmp_path, extra, needle):
    code, _, err = run_cli(capsys, "train-tokenizer", "--data", image_folder, "--out", tmp_path / "t", *TINY_TOKENIZER, *extra)
    assert_user_error(code, err, needle)
    assert not (tmp_path / "t" / "model.safetensors").exists()


def test_train_tokenizer_bad_data(capsys, tmp_path):
    code, _, err = run_cli(capsys, "train-tokenizer", "--data", tmp_path / "missing", "--out", tmp_path / "t", *TINY_TOKENIZER)
    assert_user_error(code, err, f"data folder {tmp_path / 'missing'} does not exist")
    (tmp_path / "empty").mkdir()
    code, _, err = run_cli(capsys, "train-tokenizer", "--data", tmp_path / "empty", "--out", tmp_path / "t", *TINY_TOKENIZER)
    assert_user_error(code, err, f"no images (png/jpg/jpeg/webp/bmp/gif/tif/tiff) found under {tmp_path / 'empty'}")
    (tmp_path / "texts").mkdir()
    (tmp_path / "texts" / "a.txt").write_text("hello")
    code, _, err = run_cli(capsys, "train-tokenizer", "--data", tmp_path / "texts", "--out", tmp_path / "t", *TINY_TOKENIZER)
    assert_user_error(code, err, f"no images (png/jpg/jpeg/webp/bmp/gif/tif/tiff) found under {tmp_path / 'texts'}")
    assert not (tmp_path / "t" / "model.safetensors").exists()


def test_reconstruct_bad_tokenizer_folders(capsys, tiny_run, image_folder, tmp_path):
    code, _, err = run_cli(capsys, "reconstruct", "--tokenizer", tmp_path / "nothing", "--data", image_folder,
                           "--out", tmp_path / "r.png")
    assert_user_error(code, err, f"tokenizer folder {tmp_path / 'nothing'} does not exist")
    broken = tmp_path / "broken"
    shutil.copytree(tiny_run / "tokenizer", broken)
    (broken / "model.safetensors").unlink()
    code, _, err = run_cli(capsys, "reconstruct", "--tokenizer", broken, "--data", image_folder, "--out", tmp_path / "r.png")
    assert_user_error(code, err, f"tokenizer folder {broken} has no model.safetensors")
    config = json.loads((tiny_run / "tokenizer" / "config.json").read_text())
    config["codebook_size"] = config["codebook_size"] * 2
    shutil.copy(tiny_run / "tokenizer" / "model.safetensors", broken / "model.safetensors")
    (broken / "config.json").write_text(json.dumps(config))
    code, _, err = run_cli(capsys, "reconstruct", "--tokenizer", broken, "--data", image_folder, "--out", tmp_path / "r.png")
    assert_user_error(code, err, "model.safetensors does not match its config.json", "quantizer.codebook")
    assert not (tmp_path / "r.png").exists()


# ------------------------------------------------------------------ the whole chain


def test_tokenize_train_prior_sample_complete(capsys, tiny_run, image_folder, tmp_path):
    tokens = tmp_path / "tokens"
    code, stdout, _ = run_cli(capsys, "tokenize", "--tokenizer", tiny_run / "tokenizer", "--data", image_folder,
                              "--out", tokens, "--flip")
    assert code == 0 and (tokens / "dataset_dict.json").is_file()
    code, stdout, _ = run_cli(capsys, "tokenize", "--inspect", tokens)
    assert code == 0 and "circle" in stdout
    prior_dir = tmp_path / "prior"
    code, _, _ = run_cli(capsys, "train-prior", "--tokens", tokens, "--out", prior_dir, "--preset", "tiny",
                         "--tokenizer", tiny_run / "tokenizer", "--set", "train.max_steps=4", "--set", "train.checkpoint_every=0")
    assert code == 0 and (prior_dir / "vqgpt_prior.json").is_file()
    assert list((prior_dir / "samples").glob("*.png")), "sample grids are written during training"

    out = tmp_path / "samples"
    args = ["sample", "--tokenizer", tiny_run / "tokenizer", "--prior", prior_dir, "--num", 3, "--class", "circle",
            "--class", "1", "--guidance", 2.0, "--top-k", 10, "--top-p", 0.9, "--temperature", 0.8, "--seed", 5]
    code, _, _ = run_cli(capsys, *args, "--out", out)
    assert code == 0
    assert len(list(out.glob("sample_*.png"))) == 6 and (out / "grid.png").is_file()
    record = json.loads((out / "settings.json").read_text())
    assert record["class_labels"] == [0, 1] and record["class_names"] == ["circle", "square"]
    assert record["guidance"] == 2.0 and record["top_k"] == 10 and record["top_p"] == 0.9 and record["seed"] == 5
    code, _, _ = run_cli(capsys, *args, "--out", tmp_path / "again")
    assert code == 0
    for a in sorted(out.glob("sample_*.png")):
        assert np.array_equal(np.asarray(Image.open(a)), np.asarray(Image.open(tmp_path / "again" / a.name)))
    together = ["sample", "--run", tiny_run, "--num", 1, "--class", "circle", "square"]  # several labels, one flag
    code, _, _ = run_cli(capsys, *together, "--out", tmp_path / "together")
    assert code == 0 and json.loads((tmp_path / "together" / "settings.json").read_text())["class_labels"] == [0, 1]

    done = tmp_path / "completed"
    code, _, _ = run_cli(capsys, "complete", "--run", tiny_run, "--image", image_folder / "circle" / "01.png",
                         "--keep-rows", 2, "--num", 3, "--out", done)
    assert code == 0 and (done / "grid.png").is_file() and len(list(done.glob("completion_*.png"))) == 3

    code, stdout, _ = run_cli(capsys, "evaluate", "--run", tiny_run, "--data", image_folder, "--num-samples", 10)
    assert code == 0 and "validation_bits_per_code" in stdout and "psnr" in stdout and "FID protocol:" in stdout


def pngs(folder: Path) -> dict[str, np.ndarray]:
    return {p.name: np.asarray(Image.open(p)) for p in sorted(folder.glob("sample_*.png"))}


def test_precision_flag(capsys, tiny_run, tmp_path):
    """--precision bf16 samples (on a bf16 copy of the prior) and is recorded in settings.json."""
    code, _, _ = run_cli(capsys, "sample", "--run", tiny_run, "--class", "circle", "--num", 2, "--seed", 1,
                         "--precision", "bf16", "--sampler", "sjd", "--out", tmp_path / "bf16")
    assert code == 0 and len(pngs(tmp_path / "bf16")) == 2
    assert json.loads((tmp_path / "bf16" / "settings.json").read_text())["precision"] == "bf16"


def test_sampler_flag_and_seeds_mean_images(capsys, tiny_run, tmp_path):
    """--sampler ar/jacobi give the same images, sjd other ones; the k-th image of a class with one
    --seed is the same whatever --num, --batch-size and the other --class values."""
    base = ["sample", "--run", tiny_run, "--seed", 4, "--guidance", 1.5]
    runs = {}
    for sampler in ("ar", "jacobi", "sjd", "auto"):
        code, _, _ = run_cli(capsys, *base, "--class", "circle", "--num", 2, "--sampler", sampler, "--out", tmp_path / sampler)
        assert code == 0
        runs[sampler] = pngs(tmp_path / sampler)
        assert json.loads((tmp_path / sampler / "settings.json").read_text())["sampler"] == sampler
    assert len(runs["ar"]) == 2
    for sampler in ("jacobi", "auto"):
        assert all(np.array_equal(runs["ar"][k], runs[sampler][k]) for k in runs["ar"])
    assert not all(np.array_equal(runs["ar"][k], runs["sjd"][k]) for k in runs["ar"])

    code, _, _ = run_cli(capsys, *base, "--class", "square", "--class", "circle", "--num", 3, "--batch-size", 2,
                         "--sampler", "ar", "--out", tmp_path / "more")
    assert code == 0
    more = pngs(tmp_path / "more")
    assert np.array_equal(more["sample_0003_class-circle.png"], runs["ar"]["sample_0000_class-circle.png"])
    assert np.array_equal(more["sample_0004_class-circle.png"], runs["ar"]["sample_0001_class-circle.png"])


@pytest.mark.parametrize("flags, needle", [
    (["--guidance", "inf"], "--guidance: expected a finite number, got 'inf'"),
    (["--guidance", "nan"], "--guidance: expected a finite number, got 'nan'"),
    (["--guidance", "-1"], "--guidance must be a number in [0, 100] (1 = no guidance), got -1.0"),
    (["--guidance", "1000"], "--guidance must be a number in [0, 100] (1 = no guidance), got 1000.0"),
    (["--temperature", "1e-45"], "--temperature must be a number in [0.01, 100] (for greedy codes use --top-k=1)"),
    (["--temperature", "nan"], "--temperature: expected a finite number, got 'nan'"),
    (["--top-p", "1.5"], "--top-p must be in (0, 1] (or unset), got 1.5"),
    (["--sampler", "beam"], "--sampler must be one of auto, ar, jacobi, sjd, got 'beam'"),
    (["--precision", "fp8"], "--precision must be one of auto, fp32, bf16, got 'fp8'"),
])
def test_absurd_sampling_values_are_one_line_errors(capsys, tiny_run, tmp_path, flags, needle):
    code, _, err = run_cli(capsys, "sample", "--run", tiny_run, "--class", "circle", "--out", tmp_path / "s", *flags)
    assert_user_error(code, err, needle)
    assert not (tmp_path / "s").exists()


def test_sample_and_complete_bad_input(capsys, tiny_run, tmp_path):
    base = ["sample", "--run", tiny_run, "--out", tmp_path / "s"]
    assert_user_error(*run_cli(capsys, *base, "--class", "triangle")[::2],
                      "unknown class 'triangle'; classes are: circle, square (or 0..1)")
    assert_user_error(*run_cli(capsys, *base, "--num", 0)[::2], "--num must be at least 1, got 0")
    assert_user_error(*run_cli(capsys, "sample", "--run", tmp_path / "nowhere", "--out", tmp_path / "s")[::2],
                      f"run folder {tmp_path / 'nowhere'} does not exist")
    half = tmp_path / "half"
    shutil.copytree(tiny_run / "tokenizer", half / "tokenizer")
    assert_user_error(*run_cli(capsys, "sample", "--run", half, "--out", tmp_path / "s")[::2], f"run folder {half} has no prior/ (run `vqgpt train-prior` or `vqgpt demo` first)")
    not_image = tmp_path / "notes.txt"
    not_image.write_text("words")
    complete = ["complete", "--run", tiny_run, "--num", 2, "--out", tmp_path / "c"]
    assert_user_error(*run_cli(capsys, *complete, "--image", not_image, "--keep-rows", 1)[::2],
                      f"{not_image} is not an image this tool can read")
    good = tmp_path / "good.png"
    Image.new("RGB", (20, 20), (200, 10, 10)).save(good)
    assert_user_error(*run_cli(capsys, *complete, "--image", good, "--keep-rows", 99)[::2],
                      "--keep-rows must be between 0 and 8 (the code grid has 8 rows), got 99")
    assert_user_error(*run_cli(capsys, *complete, "--image", good, "--keep-rows", -1)[::2], "--keep-rows must be between")
    assert not (tmp_path / "s").exists()
    assert_user_error(*run_cli(capsys, *base, "--device", "gpu")[::2], "--device 'gpu' is not a device")
    assert run_cli(capsys, *base, "--num", 2)[0] == 0
    assert_user_error(*run_cli(capsys, *base, "--num", 1)[::2],  # no stale files left behind
                      f"{tmp_path / 's'} already holds 4 result file(s); pass --overwrite or choose another folder")
    assert run_cli(capsys, *base, "--num", 1, "--overwrite")[0] == 0
    assert len(list((tmp_path / "s").glob("sample_*.png"))) == 1


def test_prior_bad_input(capsys, tiny_run, tmp_path):
    code, _, err = run_cli(capsys, "train-prior", "--tokens", tmp_path / "none", "--out", tmp_path / "p", "--preset", "tiny")
    assert_user_error(code, err, f"{tmp_path / 'none'} does not exist")
    code, _, err = run_cli(capsys, "train-prior", "--tokens", tiny_run / "tokenizer", "--out", tmp_path / "p", "--preset", "tiny")
    assert_user_error(code, err, f"{tiny_run / 'tokenizer'} is not a token dataset")
    no_json = tmp_path / "prior_no_json"
    shutil.copytree(tiny_run / "prior", no_json)
    (no_json / "vqgpt_prior.json").unlink()
    code, _, err = run_cli(capsys, "sample", "--tokenizer", tiny_run / "tokenizer", "--prior", no_json, "--out", tmp_path / "s")
    assert_user_error(code, err, f"{no_json} is not a vqgpt prior: vqgpt_prior.json is missing")


def test_tokenize_bad_input(capsys, tiny_run, image_folder, tmp_path):
    code, _, err = run_cli(capsys, "tokenize", "--tokenizer", tiny_run / "tokenizer", "--data", image_folder,
                           "--out", tiny_run / "tokens")
    assert_user_error(code, err, f"{tiny_run / 'tokens'} already holds a token dataset; pass --overwrite to replace it")
    code, _, err = run_cli(capsys, "tokenize", "--tokenizer", image_folder, "--data", image_folder, "--out", tmp_path / "t")
    assert_user_error(code, err, f"tokenizer folder {image_folder} has no config.json; is it a tokenizer folder?")
    (tmp_path / "empty").mkdir()
    code, _, err = run_cli(capsys, "tokenize", "--tokenizer", tiny_run / "tokenizer", "--data", tmp_path / "empty",
                           "--out", tmp_path / "t")
    assert_user_error(code, err, f"no images (png/jpg/jpeg/webp/bmp/gif/tif/tiff) found under {tmp_path / 'empty'}")
    code, _, err = run_cli(capsys, "tokenize", "--tokenizer", tiny_run / "tokenizer", "--data", image_folder,
                           "--out", tmp_path / "t", "--crops", -1)
    assert_user_error(code, err, "invalid tokenize config: crops must be ≥ 0, got -1")


def test_console_script_exit_code(tmp_path):
    """The installed entry point itself: a user error is one line on stderr and exit code 2."""
    exe = Path(sys.executable).with_name("vqgpt")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "vqgpt"]
    result = subprocess.run([*cmd, "train-tokenizer", "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "o")],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert result.stderr.strip().startswith("error:") and len(result.stderr.strip().splitlines()) == 1


def test_demo_quick(capsys, tmp_path):
    """The one-command demo, with a fraction of its steps: every stage runs and writes its
    output; run again, it reuses every finished stage; --overwrite spares foreign folders."""
    run = tmp_path / "demo"
    code, stdout, _ = run_cli(capsys, "demo", "--out", run, "--quick")
    assert code == 0
    for rel in ("tokenizer/model.safetensors", "tokens/dataset_dict.json", "prior/vqgpt_prior.json",
                "samples/grid.png", "reconstructions.png", "demo_figures.json", "held_out_digits.vqga"):
        assert (run / rel).exists(), rel
    figures = json.loads((run / "demo_figures.json").read_text())
    assert figures["tokenize"]["train_rows"] == 1617 and figures["tokenize"]["validation_rows"] == 180
    assert figures["check"]["real_digit_accuracy"] > 0.9  # the judge itself recognises real digits
    assert figures["check"]["fd_ratio"] > 0 and "Fréchet distance" in stdout
    assert len(list((run / "samples").glob("sample_*_class-*.png"))) == 100
    assert "[5/6]" in stdout
    assert figures["compress"]["exact"] and figures["compress"]["images"] == 180 and "decoded bit-exactly" in stdout
    assert figures["compress"]["bytes"] == (run / "held_out_digits.vqga").stat().st_size

    code, stdout, _ = run_cli(capsys, "demo", "--out", run, "--quick")
    assert code == 0 and stdout.count("reusing") == 3

    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("precious")
    code, _, err = run_cli(capsys, "demo", "--out", tmp_path / "mine", "--quick", "--overwrite")
    assert_user_error(code, err, f"--overwrite refused: {tmp_path / 'mine'} holds files the demo did not write "
                                 "(thesis.tex); choose another --out")
    assert (tmp_path / "mine" / "thesis.tex").exists()


def test_sample_overwrite_replaces_the_old_results_whole_or_not_at_all(capsys, tiny_run, tmp_path, monkeypatch):
    """Killed (or out of disk) while writing the new results, `sample --overwrite` leaves the old ones
    whole: they are replaced in one rename only once the new ones are complete."""
    from vqgpt.pipeline.generation import files

    out = tmp_path / "s"
    assert run_cli(capsys, "sample", "--run", tiny_run, "--num", 3, "--seed", 1, "--out", out)[0] == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def killed_while_writing(*args, **kwargs):
        raise KeyboardInterrupt  # what a kill or a full disk does half-way through the new results

    monkeypatch.setattr(files, "write_settings", killed_while_writing)
    code, _, err = run_cli(capsys, "sample", "--run", tiny_run, "--num", 2, "--seed", 2, "--out", out, "--overwrite")
    assert code == 130 and "interrupted" in err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # the old results, untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s"]  # and no half-written folder beside them
    monkeypatch.undo()
    assert run_cli(capsys, "sample", "--run", tiny_run, "--num", 2, "--seed", 2, "--out", out, "--overwrite")[0] == 0
    assert len(list(out.glob("sample_*.png"))) == 2  # replaced as a whole: no stale third image
    (out / "notes.txt").write_text("mine")
    assert_user_error(*run_cli(capsys, "sample", "--run", tiny_run, "--num", 2, "--out", out, "--overwrite")[::2],
                      f"--overwrite refused: {out} holds files besides earlier results (notes.txt)")
    assert (out / "notes.txt").read_text() == "mine"


def test_complete_with_a_folder_for_an_image_says_so(capsys, tiny_run, image_folder, tmp_path):
    code, _, err = run_cli(capsys, "complete", "--run", tiny_run, "--image", tmp_path, "--keep-rows", 1,
                           "--out", tmp_path / "c")
    assert_user_error(code, err, f"{tmp_path} is a folder; give one image file")
    code, _, err = run_cli(capsys, "train-tokenizer", "--data", image_folder, "--out", tmp_path / "t", *TINY_TOKENIZER,
                           "--set", "train.learning_rate=inf")
    assert_user_error(code, err, "train.learning_rate: expected a finite number, got 'inf'")


def test_tampered_sizes_and_impossible_requests_are_one_line_before_anything_is_allocated(capsys, tiny_run, tmp_path):
    base = json.loads((tiny_run / "tokenizer" / "config.json").read_text())
    for change, says in (({"codebook_size": 10**9}, "codebook_size 1000000000 is beyond any tokenizer"),
                         ({"base_channels": 10**6}, "base_channels 1000000 is beyond any tokenizer"),
                         ({"image_size": 2**20}, "image_size 1048576 is beyond any tokenizer"),
                         ({"base_channels": "16"}, "base_channels must be int, got '16'"),
                         ({"codebook_size": 64}, "does not match its config.json")):
        folder = tmp_path / f"tok{len(list(tmp_path.iterdir()))}"
        shutil.copytree(tiny_run / "tokenizer", folder)
        (folder / "config.json").write_text(json.dumps({**base, **change}))
        code, _, err = run_cli(capsys, "reconstruct", "--tokenizer", folder, "--data", tmp_path, "--out", tmp_path / "r.png")
        assert_user_error(code, err, says)
    code, _, err = run_cli(capsys, "train-prior", "--tokens", tiny_run / "tokens", "--out", tmp_path / "p",
                           "--set", "model.hidden_size=1000000")
    assert_user_error(code, err, "model.hidden_size 1000000 is beyond any prior this tool builds")
    code, _, err = run_cli(capsys, "train-prior", "--tokens", tiny_run / "tokens", "--out", tmp_path / "p",
                           "--set", "model.hidden_size=16384", "--set", "model.num_layers=200", "--set", "model.num_heads=128")
    assert_user_error(code, err, "training a ", "M-parameter prior would need about", "GiB free")
    code, _, err = run_cli(capsys, "sample", "--run", tiny_run, "--num", 10**11, "--out", tmp_path / "s")
    assert_user_error(code, err, "100,000,000,000 images would need about")


def test_a_full_disk_is_one_line_and_the_old_tokenizer_stays(capsys, image_folder, tmp_path, monkeypatch):
    import errno

    from vqgpt.tokenizer import VQGAN

    out = tmp_path / "tok"
    assert run_cli(capsys, "train-tokenizer", "--data", image_folder, "--out", out, *TINY_TOKENIZER)[0] == 0
    before = VQGAN.from_pretrained(out).fingerprint()

    def disk_full(self, directory):
        raise OSError(errno.ENOSPC, "No space left on device", str(directory))

    monkeypatch.setattr(VQGAN, "save_pretrained", disk_full)
    code, _, err = run_cli(capsys, "train-tokenizer", "--data", image_folder, "--out", out, *TINY_TOKENIZER,
                           "--set", "train.seed=1", "--overwrite")
    lines = [line for line in err.strip().splitlines() if line.startswith("error:")]
    assert code == 1 and len(lines) == 1 and "Traceback" not in err
    assert f"no space left on the device while writing {out}" in lines[0] and "intact" in lines[0]
    monkeypatch.undo()
    assert VQGAN.from_pretrained(out).fingerprint() == before  # the finished tokenizer was never removed
