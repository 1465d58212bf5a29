"""Generation: sample code grids from the prior and decode them into images.

    from vqgpt.pipeline.generation import Pipeline
    pipe = Pipeline.from_pretrained("demo-run")
    images = pipe(num=8, class_labels=(3,))

- ``pipeline.py``: ``Pipeline`` — the tokenizer and its prior, one ``__call__``, ``complete``;
- ``files.py``: what ``vqgpt sample`` / ``vqgpt complete`` write (PNGs, the grid, settings.json);
- ``training_hooks.py``: what prior training borrows from the tokenizer (sample grids, pixels).

Reads images through ``vqgpt.pipeline.data``.
"""

from .pipeline import OutputType, Pipeline

__all__ = ["Pipeline", "OutputType"]
