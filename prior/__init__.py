"""Stage 2 of vqgpt: a GPT prior (a `transformers` causal LM) over the tokenizer's code grids.

Knows integer grids only — codebook size, grid height × width, number of classes — never pixels.
Names load on first use: `vqgpt.prior.config` imports no torch.
"""

import lazy_loader

__getattr__, __dir__, __all__ = lazy_loader.attach(
    __name__,
    submodules=["config", "data", "decode_loop", "entropy_coding", "kv_decoders", "model", "presets", "run_folder", "sampling",
                "selection", "streams", "train"],
    submod_attrs={
        "config": ["PriorConfig", "PriorTrainConfig"],
        "presets": ["DEFAULT_PRESET", "PRESETS"],
        "data": ["TokenData", "TokenSequences", "load_token_dataset", "write_token_dataset", "read_token_meta"],
        "model": ["PriorSpec", "build_prior_model", "load_prior", "prior_fingerprint", "save_prior"],
        "entropy_coding": ["GridCoder"],
        "sampling": ["sample"],
        "streams": ["image_seeds"],
        "train": ["evaluate_bits_per_code", "train_prior", "train_step"],
    },
)
