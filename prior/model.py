"""The prior: a plain `transformers` causal LM over code grids, plus `PriorSpec`, the small JSON
(`vqgpt_prior.json`) that says what its tokens mean.

Token layout (contract): codes `0 … K-1`, class tokens `K … K+C-1`, then one "no class" token
`K+C`. A sequence is `[condition token, code_0 … code_{h·w-1}]` in raster order; the model reads
the first `h·w` tokens and predicts the `h·w` codes.

The saved folder is an ordinary `save_pretrained` folder: `AutoModelForCausalLM.from_pretrained`
loads it with nothing of ours imported. `load_prior` additionally reads and checks our JSON.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig, PreTrainedModel

from vqgpt.atomic import write_folder

from .config import PriorConfig

__all__ = ["PriorSpec", "build_prior_model", "save_prior", "load_prior", "SPEC_FILE", "code_logits", "prior_fingerprint"]

SPEC_FILE = "vqgpt_prior.json"
SPEC_FORMAT = "vqgpt-prior"
SPEC_VERSION = 1


@dataclass(frozen=True)
class PriorSpec:
    """What the prior's tokens mean: codebook size K, grid (h, w), class names, tokenizer."""

    codebook_size: int  # K: codes are tokens 0 … K-1
    grid: tuple[int, int]  # (h, w) of the code grid; sequences hold h·w codes in raster order
    class_names: tuple[str, ...] = ()  # C classes → tokens K … K+C-1 (empty: unconditional only)
    tokenizer_fingerprint: str = ""  # the tokenizer whose codes these are ("" = unknown)
    # share of training rows whose class token was replaced by the null token: 0 means the null
    # condition was never trained, so unconditional rows and classifier-free guidance are refused
    # (None: not known — a hand-made spec, or a folder written before vqgpt recorded it)
    label_dropout: float | None = field(default=None, compare=False)
    # sampling defaults chosen at the end of training (prior/selection.py) and how; None = none recorded
    sampling: dict | None = field(default=None, compare=False)
    path: str = field(default="", compare=False)  # folder it was loaded from (not saved)

    def __post_init__(self) -> None:
        if self.codebook_size < 2:
            raise ValueError(f"codebook_size must be at least 2, got {self.codebook_size}")
        if len(self.grid) != 2 or min(self.grid) < 1:
            raise ValueError(f"grid must be (h, w) with h, w ≥ 1, got {self.grid}")
        object.__setattr__(self, "grid", (int(self.grid[0]), int(self.grid[1])))
        object.__setattr__(self, "class_names", tuple(str(c) for c in self.class_names))
        if self.label_dropout is not None and not 0.0 <= self.label_dropout <= 1.0:
            raise ValueError(f"label_dropout must be in [0, 1], got {self.label_dropout}")

    @property
    def has_null_condition(self) -> bool:
        """Was the "no class" token trained? Always for unconditional priors; for class-conditional
        ones only with label dropout (needed by classifier-free guidance and unconditional rows)."""
        return self.num_classes == 0 or self.label_dropout is None or self.label_dropout > 0

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def class_token_offset(self) -> int:
        return self.codebook_size

    @property
    def null_token_id(self) -> int:
        return self.codebook_size + self.num_classes

    @property
    def vocab_size(self) -> int:
        return self.codebook_size + self.num_classes + 1

    @property
    def num_codes(self) -> int:
        """h·w, the number of codes per image."""
        return self.grid[0] * self.grid[1]

    def condition_tokens(self, class_labels: torch.Tensor | None, num: int, device: torch.device | str = "cpu") -> torch.Tensor:
        """Class labels LongTensor[B] (-1 = no class) → condition tokens LongTensor[B]."""
        if class_labels is None:
            return torch.full((num,), self.null_token_id, dtype=torch.long, device=device)
        labels = torch.as_tensor(class_labels, dtype=torch.long, device=device).flatten()
        if labels.numel() and (labels.min() < -1 or labels.max() >= self.num_classes):
            bad = labels[(labels < -1) | (labels >= self.num_classes)][0].item()
            if self.num_classes == 0:
                raise ValueError(f"class label {bad} given, but this prior has no classes (unconditional)")
            raise ValueError(f"class label {bad} is out of range; this prior has classes 0..{self.num_classes - 1} (or -1 = none)")
        return torch.where(labels >= 0, labels + self.class_token_offset, torch.full_like(labels, self.null_token_id))

    def to_json(self) -> dict:
        return {
            "format": SPEC_FORMAT,
            "version": SPEC_VERSION,
            "codebook_size": self.codebook_size,
            "grid": list(self.grid),
            "class_names": list(self.class_names),
            "num_classes": self.num_classes,
            "class_token_offset": self.class_token_offset,
            "null_token_id": self.null_token_id,
            "vocab_size": self.vocab_size,
            "tokenizer_fingerprint": self.tokenizer_fingerprint,
            "label_dropout": self.label_dropout,
            **({"sampling": self.sampling} if self.sampling else {}),
        }

    @classmethod
    def from_json(cls, data: dict, where: str = SPEC_FILE) -> "PriorSpec":
        """Parse and cross-check the saved JSON; anything inconsistent is a one-line ValueError."""
        if not isinstance(data, dict) or data.get("format") != SPEC_FORMAT:
            raise ValueError(f"{where} is not a vqgpt prior description (format must be {SPEC_FORMAT!r})")
        if data.get("version") != SPEC_VERSION:
            raise ValueError(f"{where} has version {data.get('version')!r}; this vqgpt reads version {SPEC_VERSION}")
        missing = [k for k in ("codebook_size", "grid", "class_names") if k not in data]
        if missing:
            raise ValueError(f"{where} lacks {', '.join(missing)}")
        try:
            spec = cls(int(data["codebook_size"]), tuple(data["grid"]), tuple(data["class_names"]),
                       str(data.get("tokenizer_fingerprint", "")), None if data.get("label_dropout") is None else float(data["label_dropout"]),
                       _sampling(data.get("sampling"), where))
        except (TypeError, ValueError) as err:
            raise ValueError(f"{where}: {err}") from None
        for key in ("num_classes", "class_token_offset", "null_token_id", "vocab_size"):
            if key in data and data[key] != getattr(spec, key):
                raise ValueError(f"{where}: {key} is {data[key]} but the codebook and classes imply {getattr(spec, key)}")
        return spec


def _sampling(value, where: str) -> dict | None:
    """The recorded sampling defaults, checked (they decide what `vqgpt sample` does)."""
    if value is None:
        return None
    ok = isinstance(value, dict) and all(isinstance(value.get(k), (int, float)) and math.isfinite(value[k]) and value[k] > 0
                                         for k in ("guidance", "temperature"))
    if not ok:
        raise ValueError(f"{where}: 'sampling' must hold a positive guidance and temperature, got {value!r}")
    return value


def build_prior_model(config: PriorConfig, spec: PriorSpec) -> PreTrainedModel:
    """A freshly initialised causal LM for `spec`'s vocabulary and sequence length."""
    seq_len = spec.num_codes  # model input: condition token + the first h·w-1 codes
    shared = dict(vocab_size=spec.vocab_size, tie_word_embeddings=config.tie_word_embeddings,
                  initializer_range=config.initializer_range, bos_token_id=None, eos_token_id=None,
                  pad_token_id=None, attn_implementation="sdpa")
    if config.architecture == "llama":
        hf_config = LlamaConfig(
            hidden_size=config.hidden_size,
            intermediate_size=config.mlp_size,
            num_hidden_layers=config.num_layers,
            num_attention_heads=config.num_heads,
            num_key_value_heads=config.num_kv_heads or config.num_heads,
            max_position_embeddings=seq_len,
            attention_dropout=config.dropout,
            rope_parameters={"rope_type": "default", "rope_theta": config.rope_theta},
            **shared,
        )
    else:
        hf_config = GPT2Config(
            n_positions=seq_len,
            n_embd=config.hidden_size,
            n_layer=config.num_layers,
            n_head=config.num_heads,
            n_inner=config.mlp_size,
            resid_pdrop=config.dropout,
            embd_pdrop=config.dropout,
            attn_pdrop=config.dropout,
            **shared,
        )
    return AutoModelForCausalLM.from_config(hf_config)


def code_logits(model: PreTrainedModel, input_ids: torch.Tensor, spec: PriorSpec, **kwargs) -> tuple[torch.Tensor, object]:
    """Forward pass returning logits restricted to the K code tokens, in float32.

    input_ids: LongTensor[B, T] → (FloatTensor[B, T, K], cache or None). Only codes are ever
    predicted, so the class and null columns are dropped (equivalent to masking them to -inf).
    """
    out = model(input_ids=input_ids, **kwargs)
    fields = {f.name for f in dataclasses.fields(out)}
    cache = out.cache if "cache" in fields else getattr(out, "past_key_values", None)  # transformers ≥ 5.24 / earlier
    return out.logits[..., : spec.codebook_size].float(), cache


# config.json entries that change with the software or the loading, not with what the model computes
VOLATILE_CONFIG_KEYS = ("transformers_version", "_name_or_path", "dtype", "torch_dtype", "_attn_implementation_autoset")


def prior_fingerprint(model: PreTrainedModel, spec: PriorSpec) -> str:
    """16 hex chars of sha256 over what the prior's distributions depend on: the token layout (codebook,
    grid, classes), the model's config and every weight's bytes (as the tokenizer's fingerprint)."""
    digest = hashlib.sha256()
    layout = {"codebook_size": spec.codebook_size, "grid": list(spec.grid), "class_names": list(spec.class_names)}
    digest.update(json.dumps(layout, sort_keys=True, separators=(",", ":")).encode())
    config = {k: v for k, v in model.config.to_dict().items() if k not in VOLATILE_CONFIG_KEYS}
    digest.update(json.dumps(config, sort_keys=True, separators=(",", ":"), default=str).encode())
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
        digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()[:16]


def save_prior(model: PreTrainedModel, spec: PriorSpec, out_dir: str | Path) -> Path:
    """Write `save_pretrained` files + `vqgpt_prior.json` into `out_dir` atomically (a temporary
    sibling folder, then one rename: `vqgpt.atomic.write_folder`)."""
    out_dir = Path(out_dir)
    with write_folder(out_dir) as tmp:
        model.save_pretrained(tmp)
        (tmp / SPEC_FILE).write_text(json.dumps(spec.to_json(), indent=2) + "\n")
    return out_dir


def read_spec(prior_dir: str | Path) -> PriorSpec:
    """Read and check `vqgpt_prior.json` of a prior folder."""
    prior_dir = Path(prior_dir)
    if not prior_dir.is_dir():
        raise FileNotFoundError(f"prior folder {prior_dir} does not exist; train one with `vqgpt train-prior`")
    path = prior_dir / SPEC_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{prior_dir} is not a vqgpt prior: {SPEC_FILE} is missing (train one with `vqgpt train-prior`)")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON: {err}") from None
    return PriorSpec.from_json(data, where=str(path))


def _check_sizes(prior_dir: Path, spec: PriorSpec) -> None:
    """config.json's sizes, read as text, against `vqgpt_prior.json` and sane bounds: one line each."""
    try:
        config = json.loads((prior_dir / "config.json").read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{prior_dir / 'config.json'} is not valid JSON ({err})") from None
    if not isinstance(config, dict):
        raise ValueError(f"{prior_dir / 'config.json'} must hold a JSON object")
    vocab = config.get("vocab_size")
    if vocab != spec.vocab_size:
        raise ValueError(f"{prior_dir}: model vocabulary {vocab} does not match {SPEC_FILE} ({spec.vocab_size} = "
                         f"{spec.codebook_size} codes + {spec.num_classes} classes + 1)")
    bounds = {"hidden_size": 65536, "n_embd": 65536, "num_hidden_layers": 1024, "n_layer": 1024,
              "intermediate_size": 1 << 20, "max_position_embeddings": 1 << 20, "n_positions": 1 << 20}
    for key, bound in bounds.items():
        value = config.get(key)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or not 0 < value <= bound):
            raise ValueError(f"{prior_dir / 'config.json'}: {key} {value!r} is not a size this tool loads "
                             f"(1..{bound}); the prior folder is damaged")


def load_prior(prior_dir: str | Path, device: str | torch.device = "cpu") -> tuple[PreTrainedModel, PriorSpec]:
    """Load a prior folder → (model in eval mode on `device`, its PriorSpec)."""
    spec = read_spec(prior_dir)
    prior_dir = Path(prior_dir)
    if not (prior_dir / "config.json").is_file():
        raise FileNotFoundError(f"{prior_dir} has {SPEC_FILE} but no config.json; the prior folder is incomplete")
    _check_sizes(prior_dir, spec)  # before anything is allocated: an edited config.json is refused from its text
    try:  # never run code a folder asks for; a damaged config or weights file is one line, not a traceback
        model, info = AutoModelForCausalLM.from_pretrained(prior_dir, output_loading_info=True, trust_remote_code=False)
    except Exception as err:  # transformers/safetensors raise OSError, ValueError, RuntimeError, JSON errors…
        reason = (str(err).strip().splitlines() or [""])[0][:300]
        raise ValueError(f"{prior_dir} could not be loaded as a prior ({type(err).__name__}: {reason}); "
                         "the folder is damaged or not written by `vqgpt train-prior`") from None
    problems = {k: sorted(v) for k, v in info.items() if k.endswith("_keys") and v}
    if problems:  # a strict load: missing or stray weights are an error, never silently re-initialised
        raise ValueError(f"{prior_dir}: weights do not match config.json ({problems}); the prior folder is damaged")
    if model.config.vocab_size != spec.vocab_size:
        raise ValueError(
            f"{prior_dir}: model vocabulary {model.config.vocab_size} does not match {SPEC_FILE} ({spec.vocab_size} = "
            f"{spec.codebook_size} codes + {spec.num_classes} classes + 1)"
        )
    positions = getattr(model.config, "max_position_embeddings", None) or getattr(model.config, "n_positions", None)
    if positions is not None and positions < spec.num_codes:
        raise ValueError(f"{prior_dir}: model holds {positions} positions, the grid {spec.grid} needs {spec.num_codes}")
    spec = dataclasses.replace(spec, path=str(prior_dir))
    return model.to(device).eval(), spec
