"""vqgpt's pipeline: the two stages chained, laid out by job.

    data/         data sources: a folder, a saved or hub dataset, the bundled sets → ImageSource
    tokens/       token datasets: tokenize a source (resumable, multi-process), describe one
    generation/   Pipeline: sample code grids and decode them; what sample/complete write
    evaluation/   evaluate and reconstruct on held-out images; FID protocol; the digit check
    cli/          the ``vqgpt`` command (parser without torch, one function per verb)
    settings.py   torch-free settings (SampleConfig, TokenizeConfig) and config layering
    derived.py    defaults derived from the user's data (what train-tokenizer/train-prior choose)
    demo.py       the whole chain on the bundled digits

Imports go one way: data ← tokens, generation ← evaluation ← cli (the demo uses all but the cli);
nothing imports the command line. Names load on first use.
"""

import lazy_loader

__getattr__, __dir__, __all__ = lazy_loader.attach(
    __name__,
    submodules=["cli", "data", "demo", "derived", "evaluation", "generation", "settings", "tokens"],
    submod_attrs={
        "data": ["ImageSource", "held_out_split", "load_images"],
        "evaluation": ["evaluate", "reconstruct"],
        "generation": ["Pipeline"],
        "settings": ["SampleConfig", "TokenizeConfig"],
        "tokens": ["describe_tokens", "tokenize_dataset"],
    },
)
