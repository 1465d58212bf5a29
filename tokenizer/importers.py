"""Published VQGAN tokenizers → ordinary vqgpt tokenizers.

    model = import_tokenizer("llamagen", "vq_ds16_c2i.pt")            # a VQGAN, ready to save
    model = import_tokenizer("taming", "last.ckpt", config="model.yaml")
    model = import_tokenizer("diffusers", "amused-256/vqvae")

Three families, one architecture: what their models need is a setting of ``VQGANConfig`` (attention
at chosen resolutions and in the middle blocks, GroupNorm groups, a Euclidean or l2-normalised
codebook of any dimension), and their weights are renamed onto ours — never a second model class.

- **taming** (taming-transformers' ``VQModel``): a Lightning ``.ckpt`` (weights under
  ``state_dict``; the ``loss.*`` discriminator and LPIPS weights are dropped) with its
  ``model.yaml`` (``ddconfig``, ``n_embed``, ``embed_dim``); a Euclidean codebook.
- **llamagen** (LlamaGen's ``VQ-16``/``VQ-8``): a ``torch.save`` dict with the weights under
  ``ema``, ``model`` or ``state_dict``; the architecture is read from the weights' shapes; an
  l2-normalised codebook (its ``codebook_used`` buffer is ignored). No size is stored: the
  model runs at ``image_size`` (256 by default).
- **diffusers** (``VQModel``, e.g. aMUSEd's ``vqvae``): a folder with ``config.json`` and the
  weights (safetensors, or a ``.bin`` pickle read as untrusted); a Euclidean codebook.

A checkpoint from the internet is untrusted data (``load_untrusted``): it is read with
``torch.load(weights_only=True)``; the training records Lightning pickles beside the weights
(callbacks, hyper-parameter containers, OmegaConf nodes, argparse namespaces) are replaced by
inert stand-ins, never constructed and never run; any other pickled object is refused with one
line. Loads are strict: every weight must find its place and every place its weight, or the
import stops naming them — never a partly loaded model.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable

import torch

from .config import VQGANConfig
from .model import VQGAN

__all__ = ["FAMILIES", "import_tokenizer", "load_untrusted", "file_sha256"]

FAMILIES = ("taming", "llamagen", "diffusers")

# What a training framework pickles beside the weights: replaced by inert stand-ins when read.
_RECORD_PREFIXES = ("pytorch_lightning.", "lightning.", "lightning_fabric.", "omegaconf.", "typing.", "argparse.Namespace",
                    "numpy.core.multiarray.scalar", "numpy._core.multiarray.scalar", "numpy.dtype", "numpy.dtypes.",
                    "collections.defaultdict", "builtins.set", "_codecs.encode")


class _Inert:
    """Stands in for a pickled training record: "constructing" one gives an empty OrderedDict (the one
    container torch's safe unpickler lets a pickle fill both by items and by attributes), so nothing
    of the real class — its constructor, ``__setstate__`` or ``__reduce__`` target — ever runs."""

    def __new__(cls, *args: Any, **kwargs: Any) -> OrderedDict:
        return OrderedDict()


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_untrusted(path: str | os.PathLike) -> Any:
    """``torch.load`` of a file from the internet without running any of it: tensors and plain
    containers as they are, training records as inert stand-ins, anything else refused."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        pickled = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
    except Exception as err:  # not a zip archive, truncated, another format
        raise ValueError(f"{path} is not a PyTorch checkpoint that can be read safely "
                         f"({type(err).__name__}: {str(err).splitlines()[0][:120] if str(err) else 'unreadable'})") from None
    foreign = [name for name in pickled if not name.startswith(_RECORD_PREFIXES)]
    if foreign:
        raise ValueError(f"{path} pickles {foreign[0]}, which is neither weights nor a training record vqgpt knows; "
                         "refused without running it")
    stand_ins = [(type(name.rpartition(".")[2] or "Record", (_Inert,), {}), name) for name in pickled]
    try:
        with torch.serialization.safe_globals(stand_ins):
            return torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as err:  # truncated archives and refused pickle opcodes raise assorted types
        raise ValueError(f"{path} could not be read as a checkpoint ({type(err).__name__}: "
                         f"{(str(err).splitlines() or [''])[0][:160]})") from None


# --------------------------------------------------------------------------- weight renaming


def _attention(source: dict[str, torch.Tensor], prefix: str, names: tuple[str, str, str, str, str]) -> dict[str, torch.Tensor]:
    """A single-head attention block's weights under our names (norm, fused qkv conv, proj):
    ``names`` = (norm, q, k, v, out) in the source; linear layers become 1×1 convolutions."""
    norm, q, k, v, out = (f"{prefix}{n}" for n in names)

    def conv(w: torch.Tensor) -> torch.Tensor:
        return w if w.ndim == 4 else w[:, :, None, None]  # Linear (C, C) → Conv2d (C, C, 1, 1)

    return {"norm.weight": source[f"{norm}.weight"], "norm.bias": source[f"{norm}.bias"],
            "qkv.weight": torch.cat([conv(source[f"{n}.weight"]) for n in (q, k, v)]),
            "qkv.bias": torch.cat([source[f"{n}.bias"] for n in (q, k, v)]),
            "proj.weight": conv(source[f"{out}.weight"]), "proj.bias": source[f"{out}.bias"]}


def _resnet(source: dict[str, torch.Tensor], prefix: str, skip: str) -> dict[str, torch.Tensor]:
    out = {name: source[f"{prefix}{name}"] for name in
           ("norm1.weight", "norm1.bias", "conv1.weight", "conv1.bias", "norm2.weight", "norm2.bias",
            "conv2.weight", "conv2.bias")}
    if f"{prefix}{skip}.weight" in source:
        out.update({"skip.weight": source[f"{prefix}{skip}.weight"], "skip.bias": source[f"{prefix}{skip}.bias"]})
    return out


@dataclasses.dataclass(frozen=True)
class _Names:
    """Where a family keeps each part, as functions of (our level, index within the level)."""

    enc_res: Callable[[int, int], str]
    enc_attn: Callable[[int, int], str]
    enc_down: Callable[[int], str]
    dec_res: Callable[[int, int], str]
    dec_attn: Callable[[int, int], str]
    dec_up: Callable[[int], str]
    mid: tuple[str, str, str]  # res, attention, res
    norm_out: str
    skip: str  # the 1×1 shortcut of a ResNet block whose width changes
    attn: tuple[str, str, str, str, str]  # norm, q, k, v, out
    codebook: str
    ignored: tuple[str, ...]  # source weights that are not part of the tokenizer


def _names(family: str, levels: int) -> _Names:
    last = levels - 1
    if family == "taming":
        return _Names(lambda L, i: f"encoder.down.{L}.block.{i}.", lambda L, i: f"encoder.down.{L}.attn.{i}.",
                      lambda L: f"encoder.down.{L}.downsample.", lambda L, i: f"decoder.up.{L}.block.{i}.",
                      lambda L, i: f"decoder.up.{L}.attn.{i}.", lambda L: f"decoder.up.{L}.upsample.",
                      ("mid.block_1.", "mid.attn_1.", "mid.block_2."), "norm_out", "nin_shortcut",
                      ("norm", "q", "k", "v", "proj_out"), "quantize.embedding.weight", ("loss.",))
    if family == "llamagen":  # the decoder's blocks are numbered in the order they run (lowest resolution first)
        return _Names(lambda L, i: f"encoder.conv_blocks.{L}.res.{i}.", lambda L, i: f"encoder.conv_blocks.{L}.attn.{i}.",
                      lambda L: f"encoder.conv_blocks.{L}.downsample.", lambda L, i: f"decoder.conv_blocks.{last - L}.res.{i}.",
                      lambda L, i: f"decoder.conv_blocks.{last - L}.attn.{i}.", lambda L: f"decoder.conv_blocks.{last - L}.upsample.",
                      ("mid.0.", "mid.1.", "mid.2."), "norm_out", "nin_shortcut", ("norm", "q", "k", "v", "proj_out"),
                      "quantize.embedding.weight", ("quantize.codebook_used",))
    return _Names(lambda L, i: f"encoder.down_blocks.{L}.resnets.{i}.", lambda L, i: f"encoder.down_blocks.{L}.attentions.{i}.",
                  lambda L: f"encoder.down_blocks.{L}.downsamplers.0.", lambda L, i: f"decoder.up_blocks.{last - L}.resnets.{i}.",
                  lambda L, i: f"decoder.up_blocks.{last - L}.attentions.{i}.", lambda L: f"decoder.up_blocks.{last - L}.upsamplers.0.",
                  ("mid_block.resnets.0.", "mid_block.attentions.0.", "mid_block.resnets.1."), "conv_norm_out",
                  "conv_shortcut", ("group_norm", "to_q", "to_k", "to_v", "to_out.0"), "quantize.embedding.weight", ())


def _renamed(model: VQGAN, source: dict[str, torch.Tensor], names: _Names) -> dict[str, torch.Tensor]:
    """Our state dict filled from ``source``, strictly: a missing source weight, a weight left
    over or a shape that does not fit is a ValueError naming them."""
    state: dict[str, torch.Tensor] = {}
    used: set[str] = set()

    class Tracking(dict):
        def __getitem__(self, key: str) -> torch.Tensor:
            if key not in source:
                raise ValueError(f"the checkpoint has no weight {key}")
            used.add(key)
            return source[key]

        def __contains__(self, key: object) -> bool:
            return key in source

    src = Tracking()

    def put(ours: str, weights: dict[str, torch.Tensor]) -> None:
        state.update({f"{ours}{k}": v for k, v in weights.items()})

    def plain(ours: str, theirs: str) -> None:
        put(ours, {p: src[f"{theirs}{p}"] for p in ("weight", "bias")})

    for side in ("encoder", "decoder"):
        plain(f"{side}.conv_in.", f"{side}.conv_in.")
        for k, (kind, level, i) in enumerate(getattr(model, side).layout):
            ours = f"{side}.{'down' if side == 'encoder' else 'up'}.{k}."
            if kind == "res":
                put(ours, _resnet(src, (names.enc_res if side == "encoder" else names.dec_res)(level, i), names.skip))
            elif kind == "attn":
                put(ours, _attention(src, (names.enc_attn if side == "encoder" else names.dec_attn)(level, i), names.attn))
            else:
                plain(f"{ours}conv.", f"{(names.enc_down if side == 'encoder' else names.dec_up)(level)}conv.")
        mid = getattr(model, side).mid
        put(f"{side}.mid.0.", _resnet(src, f"{side}.{names.mid[0]}", names.skip))
        if not isinstance(mid[1], torch.nn.Identity):
            put(f"{side}.mid.1.", _attention(src, f"{side}.{names.mid[1]}", names.attn))
        put(f"{side}.mid.2.", _resnet(src, f"{side}.{names.mid[2]}", names.skip))
        plain(f"{side}.norm_out.", f"{side}.{names.norm_out}.")
        plain(f"{side}.conv_out.", f"{side}.conv_out.")
    plain("quant_proj.", "quant_conv.")
    plain("post_quant_proj.", "post_quant_conv.")
    state["quantizer.codebook"] = src[names.codebook]
    state["quantizer.initialized"] = torch.tensor(True)
    state["quantizer.steps_unused"] = torch.zeros(model.config.codebook_size, dtype=torch.long)

    left = sorted(k for k in source if k not in used and not k.startswith(names.ignored))
    if left:
        raise ValueError(f"the checkpoint holds {len(left)} weight(s) this architecture has no place for "
                         f"({', '.join(left[:3])}{', …' if len(left) > 3 else ''}); is it the family you named?")
    expected = model.state_dict()
    wrong = [f"{k} {tuple(v.shape)} vs {tuple(expected[k].shape)}" for k, v in state.items()
             if tuple(v.shape) != tuple(expected[k].shape)]
    if wrong:
        raise ValueError(f"the weights do not fit the architecture read from the config ({'; '.join(wrong[:3])})")
    return state


# --------------------------------------------------------------------------- the families


def _taming(checkpoint: Path, config: Path | None, image_size: int | None) -> tuple[VQGANConfig, dict, Path]:
    if config is None:
        raise ValueError("a taming-transformers tokenizer needs its model.yaml (`config`) beside the checkpoint")
    import yaml

    try:
        spec = yaml.safe_load(Path(config).read_text())
        params = spec["model"]["params"]
        dd = params["ddconfig"]
    except FileNotFoundError:
        raise FileNotFoundError(f"config {config} does not exist") from None
    except (yaml.YAMLError, KeyError, TypeError) as err:
        raise ValueError(f"{config} is not a taming-transformers model.yaml (model.params.ddconfig): {err}") from None
    target = str(spec["model"].get("target", ""))
    if "Gumbel" in target or "EMA" in target:
        raise ValueError(f"{config} describes {target}; only the plain Euclidean VQModel is imported")
    if dd.get("double_z") or dd.get("in_channels") != dd.get("out_ch"):
        raise ValueError(f"{config}: double_z or in_channels ≠ out_ch is not a VQGAN tokenizer this tool imports")
    cfg = VQGANConfig(image_size=image_size or int(dd["resolution"]), channels=int(dd["in_channels"]),
                      base_channels=int(dd["ch"]), channel_mult=tuple(dd["ch_mult"]), num_res_blocks=int(dd["num_res_blocks"]),
                      attn_resolutions=tuple(int(r) for r in dd.get("attn_resolutions") or ()), attn_at_lowest=True,
                      norm_groups=32, dropout=0.0, z_channels=int(dd["z_channels"]), codebook_size=int(params["n_embed"]),
                      codebook_dim=int(params["embed_dim"]), codebook_norm="none", kmeans_init=False)
    if cfg.attn_resolutions and image_size and image_size != int(dd["resolution"]):  # attention stays where it was
        scale = image_size / int(dd["resolution"])
        cfg = dataclasses.replace(cfg, attn_resolutions=tuple(int(r * scale) for r in cfg.attn_resolutions))
    data = load_untrusted(checkpoint)
    if not isinstance(data, dict) or not isinstance(data.get("state_dict"), dict):
        raise ValueError(f"{checkpoint} is not a Lightning checkpoint: it holds no state_dict")
    return cfg, data["state_dict"], checkpoint


def _llamagen(checkpoint: Path, config: Path | None, image_size: int | None) -> tuple[VQGANConfig, dict, Path]:
    if config is not None:
        raise ValueError("a LlamaGen tokenizer has no config file: its architecture is read from the weights")
    data = load_untrusted(checkpoint)
    weights = next((data[k] for k in ("ema", "model", "state_dict") if isinstance(data, dict) and isinstance(data.get(k), dict)),
                   None)
    if weights is None:
        raise ValueError(f"{checkpoint} holds no weights under 'ema', 'model' or 'state_dict'")
    try:
        ch, channels = weights["encoder.conv_in.weight"].shape[:2]
        levels = 1 + max(int(m.group(1)) for k in weights if (m := re.match(r"encoder\.conv_blocks\.(\d+)\.", k)))
        blocks = 1 + max(int(m.group(1)) for k in weights if (m := re.match(r"encoder\.conv_blocks\.0\.res\.(\d+)\.", k)))
        widths = [weights[f"encoder.conv_blocks.{L}.res.0.conv1.weight"].shape[0] for L in range(levels)]
        codebook_size, codebook_dim = weights["quantize.embedding.weight"].shape
        z_channels = weights["encoder.conv_out.weight"].shape[0]
    except (KeyError, ValueError, AttributeError):
        raise ValueError(f"{checkpoint} does not hold a LlamaGen VQModel (no encoder.conv_blocks / quantize.embedding)") from None
    if any(w % ch for w in widths):
        raise ValueError(f"{checkpoint}: level widths {widths} are not multiples of the first ({ch})")
    size = image_size or 256
    factor = 2 ** (levels - 1)
    cfg = VQGANConfig(image_size=size, channels=int(channels), base_channels=int(ch),
                      channel_mult=tuple(int(w // ch) for w in widths), num_res_blocks=int(blocks),
                      attn_resolutions=(size // factor,), attn_at_lowest=True, norm_groups=32, z_channels=int(z_channels),
                      codebook_size=int(codebook_size), codebook_dim=int(codebook_dim), codebook_norm="l2", kmeans_init=False)
    return cfg, weights, checkpoint


def _diffusers(folder: Path, config: Path | None, image_size: int | None) -> tuple[VQGANConfig, dict, Path]:
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"{folder} is not a folder: a diffusers VQModel is a folder with config.json and weights")
    config = Path(config) if config else folder / "config.json"
    try:
        spec = json.loads(config.read_text())
    except FileNotFoundError:
        raise ValueError(f"{folder} is not a diffusers VQModel folder: it has no config.json") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{config} is not valid JSON ({err})") from None
    if spec.get("_class_name") != "VQModel":
        raise ValueError(f"{config} describes {spec.get('_class_name')!r}, not a diffusers VQModel")
    problems = [f"{key}={spec.get(key)!r}" for key, ok in (
        ("act_fn", spec.get("act_fn", "silu") == "silu"), ("norm_type", spec.get("norm_type", "group") == "group"),
        ("in_channels", spec.get("in_channels", 3) == spec.get("out_channels", 3)),
        ("down_block_types", all(t == "DownEncoderBlock2D" for t in spec.get("down_block_types", ["DownEncoderBlock2D"]))),
        ("up_block_types", all(t == "UpDecoderBlock2D" for t in spec.get("up_block_types", ["UpDecoderBlock2D"])))) if not ok]
    widths = list(spec.get("block_out_channels", [64]))
    if any(w % widths[0] for w in widths):
        problems.append(f"block_out_channels={widths} (not multiples of the first)")
    if problems:
        raise ValueError(f"{config}: {', '.join(problems)} is not a VQModel layout this tool imports")
    latent = int(spec.get("latent_channels", 3))
    cfg = VQGANConfig(image_size=image_size or 256, channels=int(spec.get("in_channels", 3)), base_channels=int(widths[0]),
                      channel_mult=tuple(w // widths[0] for w in widths), num_res_blocks=int(spec.get("layers_per_block", 1)),
                      attn_at_lowest=bool(spec.get("mid_block_add_attention", True)),
                      norm_groups=int(spec.get("norm_num_groups", 32)), z_channels=latent,
                      codebook_size=int(spec.get("num_vq_embeddings", 256)), codebook_dim=int(spec.get("vq_embed_dim") or latent),
                      codebook_norm="none", kmeans_init=False)
    files = [folder / n for n in ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")]
    weights_file = next((f for f in files if f.is_file()), None)
    if weights_file is None:
        raise ValueError(f"{folder} is not a diffusers VQModel folder: no diffusion_pytorch_model.safetensors or .bin")
    if weights_file.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            weights = load_file(str(weights_file), device="cpu")
        except (SafetensorError, OSError, ValueError) as err:
            raise ValueError(f"{weights_file} could not be read as safetensors ({err})") from None
    else:
        weights = load_untrusted(weights_file)
    return cfg, weights, weights_file


def import_tokenizer(family: str, checkpoint: str | os.PathLike, config: str | os.PathLike | None = None,
                     image_size: int | None = None) -> VQGAN:
    """A published tokenizer of ``family`` (taming, llamagen, diffusers) as a vqgpt ``VQGAN`` in eval
    mode, its config recording where it came from (family, file name, SHA-256 of the file).

    ``checkpoint``: the ``.ckpt`` (taming), the ``.pt`` (llamagen) or the model folder (diffusers);
    ``config``: taming's ``model.yaml`` (required there; diffusers: instead of the folder's
    config.json); ``image_size``: the resolution to run at (default: taming's ``resolution``, else
    256). Raises FileNotFoundError / ValueError with one line naming what is wrong."""
    if family not in FAMILIES:
        raise ValueError(f"unknown tokenizer family {family!r}; choose {', '.join(FAMILIES)}")
    checkpoint = Path(checkpoint).expanduser()
    if not checkpoint.exists():
        raise FileNotFoundError(f"checkpoint {checkpoint} does not exist")
    if family != "diffusers" and checkpoint.is_dir():
        raise ValueError(f"{checkpoint} is a folder; a {family} checkpoint is one file")
    read = {"taming": _taming, "llamagen": _llamagen, "diffusers": _diffusers}[family]
    cfg, weights, source_file = read(checkpoint, Path(config).expanduser() if config else None, image_size)
    if not all(isinstance(v, torch.Tensor) for v in weights.values()):
        raise ValueError(f"{source_file}: the weights hold something other than tensors")
    cfg = dataclasses.replace(cfg, source_family=family, source_file=source_file.name,
                              source_sha256=file_sha256(source_file))
    model = VQGAN(cfg)
    state = _renamed(model, {k: v.float() for k, v in weights.items()}, _names(family, len(cfg.channel_mult)))
    model.load_state_dict(state, strict=True)
    return model.eval()
