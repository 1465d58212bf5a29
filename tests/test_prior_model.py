"""The prior folder: save_pretrained + vqgpt_prior.json, loading (ours and plain transformers), presets."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import torch
from transformers import AutoModelForCausalLM

from vqgpt.prior import PRESETS, PriorConfig, PriorSpec, PriorTrainConfig, build_prior_model, load_prior, save_prior
from vqgpt.prior.model import SPEC_FILE

SPEC = PriorSpec(codebook_size=20, grid=(2, 3), class_names=("x", "y"), tokenizer_fingerprint="abc123")


def tiny(arch: str = "llama") -> torch.nn.Module:
    torch.manual_seed(0)
    return build_prior_model(PriorConfig(architecture=arch, hidden_size=32, num_layers=2, num_heads=2,
                                         intermediate_size=48, dropout=0.1), SPEC).eval()


INPUT = torch.tensor([[20, 3, 4, 5, 19, 0], [22, 1, 1, 2, 3, 5]])  # (2, h*w): condition token + codes


def test_token_layout_follows_the_contract():
    assert (SPEC.class_token_offset, SPEC.null_token_id, SPEC.vocab_size, SPEC.num_codes) == (20, 22, 23, 6)
    assert SPEC.condition_tokens(torch.tensor([0, 1, -1]), 3).tolist() == [20, 21, 22]
    assert SPEC.condition_tokens(None, 2).tolist() == [22, 22]


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_save_then_plain_transformers_load_gives_identical_logits(tmp_path, arch):
    model = tiny(arch)
    save_prior(model, SPEC, tmp_path / "p")
    meta = json.loads((tmp_path / "p" / SPEC_FILE).read_text())
    assert meta == {"format": "vqgpt-prior", "version": 1, "codebook_size": 20, "grid": [2, 3], "class_names": ["x", "y"],
                    "num_classes": 2, "class_token_offset": 20, "null_token_id": 22, "vocab_size": 23,
                    "tokenizer_fingerprint": "abc123", "label_dropout": None}
    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "p").eval()
    assert type(plain) is type(model)
    with torch.no_grad():
        torch.testing.assert_close(plain(INPUT).logits, model(INPUT).logits, rtol=0, atol=0)
    ours, spec = load_prior(tmp_path / "p")
    assert spec == SPEC and spec.path == str(tmp_path / "p")
    assert not ours.training
    with torch.no_grad():
        torch.testing.assert_close(ours(INPUT).logits, model(INPUT).logits, rtol=0, atol=0)


def test_llama_is_the_default_with_sdpa_and_dropout():
    model = tiny()
    assert model.config.model_type == "llama" and model.config._attn_implementation == "sdpa"
    assert model.config.attention_dropout == 0.1 and model.config.hidden_act == "silu"
    gpt2 = tiny("gpt2")
    assert (gpt2.config.resid_pdrop, gpt2.config.embd_pdrop, gpt2.config.attn_pdrop) == (0.1, 0.1, 0.1)


def test_folder_loads_with_nothing_of_ours_imported(tmp_path):
    model = tiny()
    save_prior(model, SPEC, tmp_path / "p")
    with torch.no_grad():
        expected = model(INPUT).logits
    script = textwrap.dedent(f"""
        import sys, torch
        from transformers import AutoModelForCausalLM
        m = AutoModelForCausalLM.from_pretrained({str(tmp_path / 'p')!r}).eval()
        with torch.no_grad():
            torch.save(m(torch.tensor({INPUT.tolist()})).logits, {str(tmp_path / 'out.pt')!r})
        assert not any(name.split('.')[0] in ('prior', 'tokenizer', 'pipeline') for name in sys.modules)
    """)
    subprocess.run([sys.executable, "-c", script], check=True, cwd=tmp_path)
    torch.testing.assert_close(torch.load(tmp_path / "out.pt"), expected, rtol=0, atol=0)


def test_folder_without_our_json_is_a_clear_error(tmp_path):
    tiny().save_pretrained(tmp_path / "plain")
    with pytest.raises(FileNotFoundError, match=r"not a vqgpt prior: vqgpt_prior.json is missing"):
        load_prior(tmp_path / "plain")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_prior(tmp_path / "nowhere")


def test_inconsistent_json_is_a_clear_error(tmp_path):
    save_prior(tiny(), SPEC, tmp_path / "p")
    path = tmp_path / "p" / SPEC_FILE
    data = json.loads(path.read_text())
    path.write_text(json.dumps({**data, "null_token_id": 5}))
    with pytest.raises(ValueError, match="null_token_id is 5"):
        load_prior(tmp_path / "p")
    other = PriorSpec(codebook_size=30, grid=(2, 3), class_names=("x", "y"))
    path.write_text(json.dumps(other.to_json()))
    with pytest.raises(ValueError, match="vocabulary 23 does not match"):
        load_prior(tmp_path / "p")
    path.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_prior(tmp_path / "p")
    path.write_text(json.dumps({**data, "format": "other"}))
    with pytest.raises(ValueError, match="not a vqgpt prior description"):
        load_prior(tmp_path / "p")


def test_save_is_atomic_and_replaces_an_older_prior(tmp_path):
    save_prior(tiny(), SPEC, tmp_path / "p")
    model2 = tiny("gpt2")
    save_prior(model2, SPEC, tmp_path / "p")
    loaded, _ = load_prior(tmp_path / "p")
    assert loaded.config.model_type == "gpt2"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p"]  # no temporary folders left behind


def test_config_validation_is_one_clear_line():
    with pytest.raises(ValueError, match="divisible"):
        PriorConfig(hidden_size=30, num_heads=4)
    with pytest.raises(ValueError, match="architecture"):
        PriorConfig(architecture="mamba")
    with pytest.raises(ValueError, match="num_kv_heads"):
        PriorConfig(num_heads=8, num_kv_heads=3)
    with pytest.raises(ValueError, match="dropout"):
        PriorConfig(dropout=1.0)
    with pytest.raises(ValueError, match="mixed_precision"):
        PriorTrainConfig(mixed_precision="fp8")
    with pytest.raises(ValueError, match="label_dropout"):
        PriorTrainConfig(label_dropout=1.5)


def test_presets_build_and_grow_from_tiny_to_hundreds_of_millions():
    spec = PriorSpec(codebook_size=16384, grid=(16, 16), class_names=tuple(str(i) for i in range(1000)))
    sizes = {}
    for name, preset in PRESETS.items():
        PriorTrainConfig(**preset["train"])
        with torch.device("meta"):
            model = build_prior_model(PriorConfig(**preset["model"]), spec)
        sizes[name] = sum(p.numel() for p in model.parameters())
    order = ["tiny", "mini", "small", "base", "large"]
    assert [sizes[n] for n in order] == sorted(sizes[n] for n in order)
    assert sizes["large"] > 300e6 and sizes["base"] > 100e6


def test_a_config_edited_to_absurd_sizes_is_refused_before_loading(tmp_path):
    import json

    from vqgpt.prior.model import load_prior

    model = build_prior_model(PriorConfig(hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32), SPEC)
    save_prior(model, SPEC, tmp_path / "p")
    config = json.loads((tmp_path / "p" / "config.json").read_text())
    (tmp_path / "p" / "config.json").write_text(json.dumps({**config, "hidden_size": 10**7}))
    with pytest.raises(ValueError, match=r"hidden_size 10000000 is not a size this tool loads"):
        load_prior(tmp_path / "p")
    (tmp_path / "p" / "config.json").write_text(json.dumps({**config, "num_hidden_layers": "many"}))
    with pytest.raises(ValueError, match=r"num_hidden_layers 'many' is not a size"):
        load_prior(tmp_path / "p")
