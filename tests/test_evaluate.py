"""``vqgpt evaluate``: FID through torch-fidelity from a local (here randomly initialised) Inception
file, the closed forms of PSNR and perplexity, the JSON schema, the cache of reference statistics,
and what happens without weights. Nothing is ever downloaded: the download functions fail here."""

import json
import math
import shutil
from unittest import mock

import numpy as np
import pytest
import torch

from vqgpt.pipeline.evaluation import fid
from vqgpt.pipeline.cli import main
from vqgpt.tokenizer.metrics import psnr
from vqgpt.tokenizer.quantizer import codebook_stats

try:  # tests run offline: a download attempt is a failure, not a wait
    import torch_fidelity.feature_extractor_inceptionv3 as _tf_inception
except ImportError:  # pragma: no cover - torch-fidelity is a dependency
    _tf_inception = None


def _no_download(*args, **kwargs):
    raise AssertionError(f"a download was attempted: {args}")


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", _no_download)
    monkeypatch.setattr(torch.hub, "download_url_to_file", _no_download)
    monkeypatch.setattr(_tf_inception, "load_state_dict_from_url", _no_download)


@pytest.fixture(scope="session")
def random_inception(tmp_path_factory):
    """The FID Inception architecture with random weights (He-initialised so features stay
    O(1) through its ~90 layers), saved as a local state dict file."""
    from torch_fidelity import FeatureExtractorInceptionV3

    with mock.patch.object(_tf_inception, "load_state_dict_from_url", lambda *a, **k: {}), \
            mock.patch.object(FeatureExtractorInceptionV3, "load_state_dict", lambda self, state: None):
        net = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, (torch.nn.Conv2d, torch.nn.Linear)):
                module.weight.normal_(0.0, (2.0 / module.weight[0].numel()) ** 0.5, generator=generator)
    path = tmp_path_factory.mktemp("inception") / "random-inception.pth"
    torch.save(net.state_dict(), path)
    return path


def _images(seed: int, n: int, channels: int = 3, size: int = 24, low: int = 0, high: int = 256) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(low, high, (n, channels, size, size), generator=g, dtype=torch.uint8)


def _float(images: torch.Tensor) -> torch.Tensor:
    return images.float() / 127.5 - 1.0  # uint8 → [-1, 1], the inverse of to_uint8


def run_cli(capsys, *args):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


# ------------------------------------------------------------------ the figures themselves


def test_fid_of_a_set_against_itself_is_zero(random_inception):
    inception = fid.InceptionFeatures(random_inception, batch_size=4)
    a = fid.FrechetStats.of(inception.features(_images(0, 6)))
    b = fid.FrechetStats.of(inception.features(_images(1, 6, high=96)))  # darker images
    assert fid.frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6 * fid.frechet_distance(a, b))
    assert fid.frechet_distance(a, b) > 0


def test_our_fid_equals_torch_fidelity_and_torchmetrics_on_the_same_features(random_inception):
    """The same uint8 images through our path (float → to_uint8 → features → cached-format
    statistics) and through torch-fidelity's own ``calculate_metrics`` and torchmetrics' FID
    (TF-compatible resize), all from the same local random-Inception file."""
    import torch_fidelity
    from torchmetrics.image.fid import FrechetInceptionDistance

    real, fake = _images(2, 5), _images(3, 5, low=40)
    collectors = []
    for images in (real, fake):
        c = fid.FeatureCollector(fid.InceptionFeatures(random_inception, batch_size=3), pixels=False)
        c.add(_float(images))
        collectors.append(c.stats()["inception"])
    ours = fid.frechet_distance(*collectors)

    class Uint8Set(torch.utils.data.Dataset):
        def __init__(self, x):
            self.x = x

        def __len__(self):
            return len(self.x)

        def __getitem__(self, i):
            return self.x[i]

    library = torch_fidelity.calculate_metrics(input1=Uint8Set(real), input2=Uint8Set(fake), fid=True, cuda=False,
                                               cache=False, verbose=False, batch_size=5, save_cpu_ram=True,
                                               feature_extractor_weights_path=str(random_inception))
    assert ours == pytest.approx(library[torch_fidelity.KEY_METRIC_FID], rel=1e-4)

    metric = FrechetInceptionDistance(feature=2048, feature_extractor_weights_path=str(random_inception),
                                      antialias=False)
    metric.update(real, real=True)
    metric.update(fake, real=False)
    assert ours == pytest.approx(float(metric.compute()), rel=1e-3)


def test_reference_statistics_round_trip_through_the_npz(tmp_path):
    features = torch.randn(9, 5, generator=torch.Generator().manual_seed(0))
    stats = {"inception": fid.FrechetStats.of(features), "pixel": fid.FrechetStats.of(features[:, :3])}
    key = {"data": "x", "split": "validation", "n": 9}
    path = fid.cache_file(tmp_path, key)
    fid.save_stats(path, key, stats)
    loaded = fid.load_stats(path, key)
    assert loaded is not None and loaded["inception"].num_images == 9
    for kind in stats:
        assert (loaded[kind].mu == stats[kind].mu).all() and (loaded[kind].sigma == stats[kind].sigma).all()
    assert fid.load_stats(path, {**key, "n": 10}) is None  # another key never reads these statistics
    assert fid.frechet_distance(loaded["pixel"], stats["pixel"]) == pytest.approx(0.0, abs=1e-9)


def test_psnr_of_known_pairs_is_the_closed_form():
    x = torch.zeros(1, 3, 8, 8)  # 0.5 in [0, 1] units
    assert float(psnr(x + 0.2, x)) == pytest.approx(20.0, abs=1e-4)  # offset 0.1 → 10·log10(1 / 0.01)
    g = torch.Generator().manual_seed(0)
    a, b = torch.rand(2, 1, 16, 16, generator=g) * 2 - 1, torch.rand(2, 1, 16, 16, generator=g) * 2 - 1
    mse = ((a - b) / 2).pow(2).mean(dim=(1, 2, 3))
    assert torch.allclose(psnr(a, b), 10 * torch.log10(1 / mse), atol=1e-4)


def test_usage_and_perplexity_of_a_known_histogram():
    assert codebook_stats(torch.tensor([5, 5, 0, 0])) == pytest.approx((0.5, 2.0))
    assert codebook_stats(torch.tensor([1, 1, 1, 1])) == pytest.approx((1.0, 4.0))
    usage, perplexity = codebook_stats(torch.tensor([3, 1, 0, 0, 0, 0, 0, 0]))
    assert usage == 0.25 and perplexity == pytest.approx(math.exp(-(0.75 * math.log(0.75) + 0.25 * math.log(0.25))))


def test_real_and_generated_images_take_the_same_uint8_path():
    from vqgpt.pipeline.data.images import to_pil, to_uint8

    x = torch.rand(2, 3, 5, 5) * 2.2 - 1.1  # a little out of range on both sides
    u = to_uint8(x)
    assert u.dtype == torch.uint8 and int(u.min()) == 0 and int(u.max()) == 255
    assert torch.equal(torch.from_numpy(np.array(to_pil(x)[0])).permute(2, 0, 1), u[0])  # what a PNG holds
    assert torch.equal(to_uint8(_float(u)), u)  # quantising real uint8 images changes nothing


def test_pixel_fd_only_for_small_images():
    assert fid.pixel_fd_absent(3, 32) is None
    assert "small images" in fid.pixel_fd_absent(3, 64)


# ------------------------------------------------------------------ the verb


def _check_schema(report: dict, sections: set[str]) -> None:
    assert report["schema"] == "vqgpt-evaluate/1"
    assert {"platform", "processor", "cpu_count", "torch", "vqgpt", "device"} <= set(report["machine"])
    assert "absent" in report["fid"]
    assert sections <= set(report)
    for name, figure in (("tokenizer", "rfid"), ("prior", "gfid")):
        if name not in report:
            continue
        section = report[name]
        assert {figure, f"{figure}_absent", "pixel_fd", "pixel_fd_absent", "reference", "protocol", "path"} <= set(section)
        assert (section[figure] is None) != (section[f"{figure}_absent"] is None)  # a value or a reason, never both
        assert section["protocol"].startswith("FID protocol:") and "\n" not in section["protocol"]
        assert {"data", "split", "seed", "val_fraction", "num_images", "statistics", "reused"} <= set(section["reference"])
    if "tokenizer" in report:
        t = report["tokenizer"]
        assert {"psnr", "ssim", "lpips", "lpips_absent", "codebook_usage", "perplexity", "num_images", "fingerprint"} <= set(t)
        assert isinstance(t["psnr"], float) and 0 <= t["codebook_usage"] <= 100
    if "prior" in report:
        p = report["prior"]
        assert {"validation_bits_per_code", "train_bits_per_code", "num_samples", "seed", "sampling",
                "sample_codebook_usage", "sample_perplexity"} <= set(p)
        for row in p.get("per_class", []):
            assert {"class", "validation_bits_per_code", "held_out_rows", "samples", "pixel_fd"} <= set(row)


def test_evaluate_tokenizer_and_prior_with_inception_weights(capsys, tiny_run, image_folder, random_inception, tmp_path):
    run = tmp_path / "run"  # a copy: the reference statistics are cached inside its token dataset
    shutil.copytree(tiny_run, run)
    code, out, err = run_cli(capsys, "evaluate", "tokenizer", "--tokenizer", run / "tokenizer", "--tokens", run / "tokens",
                             "--inception-weights", random_inception, "--json")
    assert code == 0, err
    report = json.loads(out)
    _check_schema(report, {"tokenizer"})
    t = report["tokenizer"]
    assert t["rfid"] >= 0 and t["pixel_fd"] >= 0 and t["num_images"] == t["reference"]["num_images"] == 2
    assert t["reference"]["data"] == str(image_folder) and t["reference"]["split"] == "validation"
    assert t["reference"]["statistics"].startswith(str(run / "tokens" / "reference_stats"))
    assert not t["reference"]["reused"]
    sha = fid.file_sha256(random_inception)
    assert report["fid"]["weights_sha256"] == sha and sha[:12] in t["protocol"]
    assert "torch-fidelity" in t["protocol"] and "vs 2 reconstructions" in t["protocol"]

    code, out, err = run_cli(capsys, "evaluate", "prior", "--run", run, "--inception-weights", random_inception,
                             "--num-samples", 4, "--temperature", 0.9)
    assert code == 0, err
    lines = out.splitlines()
    protocol = [line for line in lines if "FID protocol:" in line]
    assert len(protocol) == 1 and "vs 4 samples" in protocol[0] and "2 images" in protocol[0]
    assert any("reused from" in line for line in lines)  # the tokenizer run cached the same split
    assert any(line.split()[:1] == ["gfid"] and "absent" not in line for line in lines)
    assert "validation_bits_per_code" in out and "temperature 0.9" in out
    assert "per class:" in out and "circle" in out and "square" in out

    code, out, _ = run_cli(capsys, "evaluate", "--run", run, "--inception-weights", random_inception,
                           "--num-samples", 4, "--json")
    assert code == 0
    both = json.loads(out)
    _check_schema(both, {"tokenizer", "prior"})
    assert both["prior"]["num_samples"] == 4 and len(both["prior"]["per_class"]) == 2
    assert both["prior"]["reference"]["reused"] and both["tokenizer"]["rfid"] == pytest.approx(t["rfid"])


def test_without_weights_fid_is_absent_in_one_line_and_the_rest_runs(capsys, tiny_run, image_folder, tmp_path,
                                                                      monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty-torch-home"))  # no weights in the hub cache
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    code, out, err = run_cli(capsys, "evaluate", "tokenizer", "--tokenizer", tiny_run / "tokenizer", "--data",
                             image_folder, "--json")
    assert code == 0, err
    report = json.loads(out)
    _check_schema(report, {"tokenizer"})
    t = report["tokenizer"]
    assert t["rfid"] is None and "no Inception weights file" in t["rfid_absent"] and "\n" not in t["rfid_absent"]
    assert str(tmp_path / "empty-torch-home") in t["rfid_absent"] and "--inception-weights" in t["rfid_absent"]
    assert t["lpips"] is None and "--vgg-weights" in t["lpips_absent"]
    assert isinstance(t["psnr"], float) and isinstance(t["pixel_fd"], float)
    assert t["reference"]["statistics"] is None  # nothing worth caching without Inception features
    assert not (tmp_path / "cache").exists()

    code, out, err = run_cli(capsys, "evaluate", "--run", tiny_run, "--num-samples", 3)
    assert code == 0, err
    assert "rfid" in out and "gfid" in out and "psnr" in out and "validation_bits_per_code" in out
    rows = {line.split()[0]: line for line in out.splitlines() if line.split()[:1] in (["rfid"], ["gfid"])}
    assert set(rows) == {"rfid", "gfid"}  # one line each, saying why
    assert all("absent: no Inception weights file" in line for line in rows.values())
    assert out.count("FID protocol: none (FID absent: no Inception weights file)") == 2


def test_lpips_with_local_vgg_weights(capsys, tiny_run, image_folder, tmp_path, monkeypatch):
    import torchvision

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty-torch-home"))
    vgg = tmp_path / "vgg16-random.pth"
    torch.save({f"features.{k}": v for k, v in torchvision.models.vgg16(weights=None).features.state_dict().items()}, vgg)
    code, out, err = run_cli(capsys, "evaluate", "tokenizer", "--tokenizer", tiny_run / "tokenizer", "--data",
                             image_folder, "--vgg-weights", vgg, "--json")
    assert code == 0, err
    t = json.loads(out)["tokenizer"]
    assert t["lpips"] is not None and t["lpips"] >= 0 and t["lpips_absent"] is None


def test_weights_are_found_in_the_torch_hub_cache(capsys, tiny_run, image_folder, random_inception, tmp_path,
                                                  monkeypatch):
    """Without --inception-weights the file is looked for where torch keeps checkpoints, under
    pytorch-fid's name (or torch-fidelity's)."""
    checkpoints = tmp_path / "torch-home" / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    (checkpoints / fid.INCEPTION_FILES[1]).symlink_to(random_inception)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    assert fid.find_inception_weights(None) == (checkpoints / fid.INCEPTION_FILES[1], None)
    (checkpoints / fid.INCEPTION_FILES[0]).symlink_to(random_inception)
    assert fid.find_inception_weights(None) == (checkpoints / fid.INCEPTION_FILES[0], None)
    code, out, err = run_cli(capsys, "evaluate", "tokenizer", "--tokenizer", tiny_run / "tokenizer", "--data",
                             image_folder, "--stats-cache", tmp_path / "stats", "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report["fid"]["weights"] == str(checkpoints / fid.INCEPTION_FILES[0]) and report["fid"]["absent"] is None
    assert report["tokenizer"]["rfid"] >= 0
    assert report["tokenizer"]["reference"]["statistics"].startswith(str(tmp_path / "stats"))


@pytest.mark.parametrize("args, needle", [
    (["tokenizer", "--guidance", 2], "--guidance belong to evaluate prior, not evaluate tokenizer"),
    (["prior", "--vgg-weights", "x.pth"], "--vgg-weights (LPIPS) belongs to evaluate tokenizer, not evaluate prior"),
    (["tokenizer", "--inception-weights", "missing.pth"], "--inception-weights missing.pth does not exist"),
    (["tokenizer", "--inception-weights", "{notes}"], "could not read Inception weights"),
    (["tokenizer", "--num-samples", 1], "--num-samples must be at least 2, got 1"),
    (["tokenizer", "--data-seed", 3], "was split with seed 0; --data-seed 3 would evaluate on images the prior was "
                                      "trained on"),
])
def test_evaluate_bad_input_is_one_error_line(capsys, tiny_run, tmp_path, args, needle):
    notes = tmp_path / "notes.pth"
    notes.write_text("not a tensor file")
    args = [str(a).replace("{notes}", str(notes)) for a in args]
    code, _, err = run_cli(capsys, "evaluate", *args, "--run", tiny_run)
    errors = [line for line in err.strip().splitlines() if line.startswith("error:")]
    assert code == 2 and len(errors) == 1 and "Traceback" not in err, err
    assert needle in errors[0], errors[0]


def test_evaluate_and_reconstruct_score_the_same_held_out_images(capsys, image_folder, tmp_path):
    """One function decides the held-out split: a tokenizer trained with --data-seed 3 is scored by
    `evaluate tokenizer` and by `reconstruct` on the same images — its own validation split under
    seed 3, not the images of seed 0's split, some of which it trained on."""
    from vqgpt.pipeline.data import load_images
    from vqgpt.pipeline.evaluation import evaluate, reconstruct
    from vqgpt.tokenizer import VQGAN

    tok = tmp_path / "tok"
    assert main(["train-tokenizer", "--data", str(image_folder), "--out", str(tok), "--preset", "tiny",
                 "--data-seed", "3", "--set", "train.max_steps=2"]) == 0
    model = VQGAN.from_pretrained(tok)
    assert model.config.trained_split_seed == 3
    held = load_images(str(image_folder), 16, 1, split="validation", seed=3).files
    assert held != load_images(str(image_folder), 16, 1, split="validation", seed=0).files  # the seeds' splits differ

    recon = reconstruct(model, str(image_folder), tmp_path / "r.png")
    report = evaluate("tokenizer", tokenizer=str(tok), data=str(image_folder))["tokenizer"]
    assert recon["split"] == report["reference"]["split"] == "validation"
    assert report["reference"]["seed"] == 3 and recon["images"] == report["num_images"] == len(held)
    assert recon["psnr"] == pytest.approx(report["psnr"], rel=1e-6)  # the same images, the same figure
    assert recon["codebook_usage"] == pytest.approx(report["codebook_usage"])

    capsys.readouterr()
    assert main(["reconstruct", "--tokenizer", str(tok), "--data", str(image_folder), "--out", str(tmp_path / "c.png")]) == 0
    assert f"scored {len(held)} of " in capsys.readouterr().out
