"""The Pipeline: output shape/mode, reproducibility, settings passed through, refusals,
completion keeping the given code rows."""

import dataclasses
import json
import shutil

import pytest
import torch
from PIL import Image

from vqgpt import Pipeline, SampleConfig
from vqgpt import prior as pr
from vqgpt import tokenizer as tk
from vqgpt.pipeline.generation import pipeline as pipeline_module
from vqgpt.pipeline.data.images import to_pil
from vqgpt.pipeline.generation.files import write_samples


@pytest.fixture(scope="module")
def pipe(tiny_run):
    return Pipeline.from_pretrained(tiny_run)


def test_output_count_size_mode(pipe):
    images = pipe(num=5, class_labels=1, generator=torch.Generator().manual_seed(0))
    size = pipe.tokenizer.config.image_size
    assert len(images) == 5
    assert all(isinstance(im, Image.Image) and im.size == (size, size) for im in images)
    assert {im.mode for im in images} == {"L" if pipe.tokenizer.config.channels == 1 else "RGB"}
    tensors = pipe(num=2, output_type="pt")
    assert tensors.shape == (2, pipe.tokenizer.config.channels, size, size) and tensors.dtype == torch.float32
    with pytest.raises(ValueError, match="output_type"):
        pipe(num=1, output_type="numpy")
    with pytest.raises(ValueError, match="unknown sampling setting.* guidance_scale; the settings are num, "):
        pipe(num=1, guidance_scale=2.0)


def test_same_generator_state_same_images_other_state_differs(pipe):
    a = pipe(num=6, generator=torch.Generator().manual_seed(3))
    b = pipe(num=6, generator=torch.Generator().manual_seed(3))
    c = pipe(num=6, generator=torch.Generator().manual_seed(4))
    as_bytes = lambda ims: b"".join(im.tobytes() for im in ims)  # noqa: E731
    assert as_bytes(a) == as_bytes(b)
    assert as_bytes(a) != as_bytes(c)
    gen = torch.Generator().manual_seed(3)
    first, second = pipe(num=6, generator=gen), pipe(num=6, generator=gen)  # the generator moves on
    assert as_bytes(first) == as_bytes(a) and as_bytes(second) != as_bytes(a)
    assert as_bytes(pipe(num=6, seed=2)) == as_bytes(pipe(SampleConfig(num=6, seed=2)))  # no generator: the seed


def test_decoded_samples_are_the_decoded_codes(pipe):
    settings = SampleConfig(num=1, seed=4)
    codes = pipe.sample_codes(settings, labels=[0, 1, 0])
    h, w = pipe.tokenizer.config.grid_size
    assert codes.shape == (3, h, w) and codes.dtype == torch.long
    assert 0 <= codes.min() and codes.max() < pipe.tokenizer.config.codebook_size
    images = pipe(settings, class_labels=(0,), num=2)
    expected = to_pil(pipe.tokenizer.decode(codes[[0, 2]]))  # the 1st and 2nd image of class 0
    assert [im.tobytes() for im in images] == [im.tobytes() for im in expected]
    assert torch.equal(pipe(settings, class_labels=(0,), num=2, output_type="codes"), codes[[0, 2]])


def test_settings_are_passed_through(pipe, monkeypatch):
    seen = {}
    real = pr.sample

    def spy(*args, **kwargs):
        seen.update(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(pipeline_module.pr, "sample", spy)
    settings = SampleConfig(num=2, class_labels=(1,), guidance=2.5, temperature=0.7, top_k=5, top_p=0.9, seed=1)
    pipe(settings)
    assert seen["guidance_scale"] == 2.5 and seen["temperature"] == 0.7
    assert seen["top_k"] == 5 and seen["top_p"] == 0.9
    assert seen["class_labels"].tolist() == [1, 1]
    assert torch.equal(seen["seeds"], pr.image_seeds(1, [1, 1], 2))  # one path: the seed → per-image seeds


def test_top_k_one_is_deterministic_whatever_the_seed(pipe):
    a = pipe(num=2, class_labels=0, top_k=1, generator=torch.Generator().manual_seed(0), output_type="codes")
    b = pipe(num=2, class_labels=0, top_k=1, generator=torch.Generator().manual_seed(99), output_type="codes")
    assert torch.equal(a, b)


def test_seed_fixes_the_kth_image_of_each_class(pipe):
    """Seeds mean images: with seed=S the k-th image of class c does not depend on how many images
    are drawn, the batch size, the other classes or (ar/jacobi) the sampler."""
    settings = SampleConfig(guidance=1.5, seed=5, sampler="ar")
    together = pipe.sample_codes(settings, labels=[0, 0, 1, 1])
    apart = pipe.sample_codes(dataclasses.replace(settings, batch_size=1, sampler="jacobi"), labels=[1, 0])
    assert torch.equal(apart[0], together[2]) and torch.equal(apart[1], together[0])
    assert not torch.equal(together[0], together[1])  # the second image of a class is another one
    assert not torch.equal(pipe.sample_codes(dataclasses.replace(settings, seed=6), labels=[0])[0], together[0])
    one = pipe(SampleConfig(num=2, class_labels=(1,), seed=3, guidance=1.5))
    two = pipe(SampleConfig(num=3, class_labels=(0, 1), seed=3, guidance=1.5, batch_size=2, sampler="jacobi"))
    assert [im.tobytes() for im in one] == [im.tobytes() for im in two[3:5]]


def test_class_names_and_indices_resolve(pipe):
    assert pipe.class_names == ["circle", "square"]
    assert pipe.resolve_classes(["square", "0"]) == (1, 0)
    with pytest.raises(ValueError, match="unknown class 'triangle'"):
        pipe.resolve_classes(["triangle"])
    with pytest.raises(ValueError, match="unknown class '7'"):
        pipe.resolve_classes(["7"])


def test_mismatched_tokenizer_is_refused(tiny_run, tmp_path):
    other = tk.VQGAN(tk.VQGAN.from_pretrained(tiny_run / "tokenizer").config)  # same config, new weights
    other.save_pretrained(tmp_path / "other")
    with pytest.raises(ValueError, match="trained on tokenizer"):
        Pipeline.from_pretrained(tmp_path / "other", tiny_run / "prior")


def test_run_missing_a_stage_is_refused(tiny_run, tmp_path):
    shutil.copytree(tiny_run / "tokenizer", tmp_path / "tokenizer")
    with pytest.raises(FileNotFoundError, match="no prior/"):
        Pipeline.from_pretrained(tmp_path)


def test_completion_keeps_the_given_rows(pipe, image_folder):
    image = image_folder / "circle" / "00.png"
    h, w = pipe.tokenizer.config.grid_size
    keep = h // 2
    original = pipe.encode(image)
    completions = pipe.complete(image, keep, num=4, generator=torch.Generator().manual_seed(0), output_type="codes")
    assert original.shape == (h, w) and completions.shape == (4, h, w)
    assert torch.equal(completions[:, :keep], original[:keep].expand(4, -1, -1))
    assert len(pipe.complete(image, keep, num=2, class_labels=(1,))) == 2  # PIL images by default
    with pytest.raises(ValueError, match="keep_rows` must be between 0 and"):
        pipe.complete(image, h + 1, num=2)
    with pytest.raises(ValueError, match="at most one class"):
        pipe.complete(image, keep, class_labels=(0, 1))


def test_sample_config_validates():
    with pytest.raises(ValueError, match="`num` must be at least 1"):
        SampleConfig(num=0)
    with pytest.raises(ValueError, match="top_p"):
        SampleConfig(top_p=1.5)
    for bad in (float("inf"), float("nan"), 1e9):
        with pytest.raises(ValueError, match="`guidance` must be a number"):
            SampleConfig(guidance=bad)
    with pytest.raises(ValueError, match="`temperature` must be a number"):
        SampleConfig(temperature=1e-45)
    with pytest.raises(ValueError, match="`sampler` must be one of"):
        SampleConfig(sampler="beam")
    assert SampleConfig(num=2, class_labels=(3, 1)).labels_per_image == [3, 3, 1, 1]


def test_settings_json_reproduces(pipe, tmp_path):
    settings = SampleConfig(num=3, seed=11, temperature=0.9)
    first = pipe(settings)
    paths = write_samples(first, settings, pipe, tmp_path)
    record = json.loads(paths["settings"].read_text())
    again = pipe(SampleConfig(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in record.items()
                                          if k in SampleConfig.__dataclass_fields__}))
    assert [im.tobytes() for im in first] == [im.tobytes() for im in again]
    assert record["tokenizer_fingerprint"] == pipe.tokenizer.fingerprint()


def test_completion_prepares_any_image_like_the_training_data(pipe, tmp_path):
    """A PIL image of another size and mode (16-bit grey) is fitted before encoding."""
    import numpy as np

    h, w = pipe.tokenizer.config.grid_size
    big = Image.fromarray((np.arange(64 * 48).reshape(48, 64) * 20).astype(np.uint16))
    assert big.mode == "I;16" and big.size != (pipe.tokenizer.config.image_size,) * 2
    original = pipe.encode(big)
    completions = pipe.complete(big, 1, num=2, generator=torch.Generator().manual_seed(0), output_type="codes")
    assert original.shape == (h, w) and completions.shape == (2, h, w)
    big.save(tmp_path / "big.png")
    assert torch.equal(pipe.encode(tmp_path / "big.png"), original)
    from_file = pipe.complete(tmp_path / "big.png", 1, num=2, generator=torch.Generator().manual_seed(0),
                              output_type="codes")
    assert torch.equal(from_file, completions)


def test_readme_python_example_runs(tiny_run, image_folder):
    """The README's Python example, pointed at the tiny run (2 classes, 16 px) instead of the demo's."""
    import re
    from pathlib import Path

    readme = (Path(__file__).parents[1] / "README.md").read_text()
    code = re.search(r"```python\n(.*?)```", readme, re.S).group(1)
    for old, new in {'"demo-run': f'"{tiny_run}', "class_labels=3": "class_labels=1",
                     'load_images("digits", 32, 1': f'load_images("{image_folder}", 16, 1',
                     "range(4)": "range(2)", "[3] * len": "[1] * len"}.items():
        assert old in code, old
        code = code.replace(old, new)
    exec(compile(code, "README.md", "exec"), {})
