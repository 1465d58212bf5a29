"""vqgpt's pipeline: data sources, tokenizing datasets, sampling + decoding, the CLI and the demo.

Where things live: ``sources.py``/``hf_sources.py``/``bundled.py`` read images from a ``--data`` source,
``images.py`` converts them, ``tokenize.py`` builds token datasets (``inspect_tokens.py``
describes one), ``generate.py`` holds ``Pipeline`` (sample + decode), ``outputs.py`` writes
results, ``cli.py`` parses the command line and ``verbs.py`` runs each verb (``reconstruct.py``,
``evaluate.py``, ``demo.py`` and ``digits_check.py`` are the larger verbs' bodies; ``fid.py`` pins
the FID protocol and ``eval_report.py`` the evaluation report).
``settings.py`` holds the torch-free settings. Names load on first use.
"""

import lazy_loader

__getattr__, __dir__, __all__ = lazy_loader.attach(
    __name__,
    submodules=["cli", "demo", "digits_check", "eval_report", "evaluate", "fid", "bundled", "generate", "hf_sources", "images",
                "inspect_tokens", "outputs", "reconstruct", "settings", "sources", "tokenize", "verbs"],
    submod_attrs={
        "generate": ["Pipeline"],
        "settings": ["SampleConfig", "TokenizeConfig"],
        "sources": ["ImageSource", "load_images"],
        "tokenize": ["tokenize_dataset"],
        "inspect_tokens": ["inspect_tokens"],
    },
)
