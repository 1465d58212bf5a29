"""vqgpt: two-stage image generation — a VQGAN tokenizer and a GPT prior on transformers.

    from vqgpt import VQGAN, Pipeline, load_images

The stages are sub-packages: ``vqgpt.tokenizer`` (images ⇄ code grids), ``vqgpt.prior``
(a causal LM over code grids) and ``vqgpt.pipeline`` (data sources, token datasets, generation,
evaluation, the ``vqgpt`` command). Leaf modules know no model: ``vqgpt.checkpoints`` (what both
trainers do with their run folders), ``vqgpt.atomic`` (atomic file and folder writes) and
``vqgpt.resources`` (will a request fit in memory). Names are imported on first use (``lazy_loader``), so
``import vqgpt`` and ``vqgpt --help`` stay free of torch until a model is needed.
"""

import lazy_loader

__version__ = "0.1.0"

__getattr__, __dir__, __all__ = lazy_loader.attach(
    __name__,
    submodules=["tokenizer", "prior", "pipeline", "atomic", "checkpoints", "resources"],
    submod_attrs={
        "tokenizer.model": ["VQGAN"],
        "tokenizer.config": ["VQGANConfig", "TokenizerTrainConfig"],
        "tokenizer.train": ["train_tokenizer"],
        "prior.config": ["PriorConfig", "PriorTrainConfig"],
        "prior.model": ["PriorSpec", "load_prior"],
        "prior.data": ["load_token_dataset"],
        "prior.train": ["train_prior"],
        "prior.sampling": ["sample"],
        "pipeline.generation": ["Pipeline"],
        "pipeline.settings": ["SampleConfig", "TokenizeConfig"],
        "pipeline.data": ["load_images"],
        "pipeline.tokens": ["tokenize_dataset"],
        "pipeline.evaluation": ["evaluate"],
    },
)
__all__ = [*__all__, "__version__"]
