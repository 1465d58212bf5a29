"""vqgpt: two-stage image generation — a VQGAN tokenizer and a GPT prior on transformers.

    from vqgpt import VQGAN, Pipeline, load_images

The stages are sub-packages: ``vqgpt.tokenizer`` (images ⇄ code grids), ``vqgpt.prior``
(a causal LM over code grids) and ``vqgpt.pipeline`` (data sources, tokenizing, sampling +
decoding, the ``vqgpt`` command). Names are imported on first use (``lazy_loader``), so
``import vqgpt`` and ``vqgpt --help`` stay free of torch until a model is needed.
"""

import lazy_loader

__version__ = "0.1.0"

__getattr__, __dir__, __all__ = lazy_loader.attach(
    __name__,
    submodules=["tokenizer", "prior", "pipeline"],
    submod_attrs={
        "tokenizer.model": ["VQGAN"],
        "tokenizer.config": ["VQGANConfig", "TokenizerTrainConfig"],
        "tokenizer.train": ["train_tokenizer"],
        "prior.config": ["PriorConfig", "PriorTrainConfig"],
        "prior.model": ["PriorSpec", "load_prior"],
        "prior.data": ["load_token_dataset"],
        "prior.train": ["train_prior"],
        "prior.sampling": ["sample"],
        "pipeline.generate": ["Pipeline"],
        "pipeline.settings": ["SampleConfig", "TokenizeConfig"],
        "pipeline.sources": ["load_images"],
        "pipeline.tokenize": ["tokenize_dataset"],
    },
)
__all__ = [*__all__, "__version__"]
