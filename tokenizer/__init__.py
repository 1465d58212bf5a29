"""vqgpt stage 1: the VQGAN image tokenizer (images ⇄ integer code grids).

    from vqgpt.tokenizer import VQGAN
    model = VQGAN.from_pretrained("runs/digits/tokenizer")
    codes = model.encode(images)        # (B, C, H, W) in [-1, 1] → LongTensor (B, h, w)
    recon = model.decode(codes)         # → (B, C, H, W) in [-1, 1]

Names load on first use: ``vqgpt.tokenizer.config`` and ``.presets`` import no torch.
"""

import lazy_loader

__getattr__, __dir__, __all__ = lazy_loader.attach(
    __name__,
    submodules=["config", "importers", "losses", "metrics", "model", "presets", "quantizer", "run_folder", "train"],
    submod_attrs={
        "config": ["VQGANConfig", "TokenizerTrainConfig"],
        "presets": ["PRESETS", "DEFAULT_PRESET"],
        "model": ["VQGAN", "VQGANOutput"],
        "quantizer": ["VectorQuantizer", "codebook_stats", "code_histogram", "perplexity"],
        "losses": ["LPIPS", "NLayerDiscriminator"],
        "train": ["train_tokenizer", "train_step", "evaluate_reconstruction", "WeightEMA"],
        "importers": ["import_tokenizer"],
    },
)
