"""Token datasets: a data source encoded by a tokenizer, one code grid per image (``vqgpt tokenize``).

    from vqgpt.pipeline.tokens import tokenize_dataset
    summary = tokenize_dataset("runs/tok", "digits", "runs/tokens")

- ``tokenize_dataset.py``: the entry point — streaming, resumable, multi-process encoding into the
  token dataset format that ``vqgpt.prior.data`` owns;
- ``shards.py``: the unit of resume and of multi-process work;
- ``describe.py``: what a token dataset holds (``vqgpt tokenize --inspect``).

Reads images through ``vqgpt.pipeline.data``.
"""

from .describe import describe_tokens
from .tokenize_dataset import tokenize_dataset

__all__ = ["tokenize_dataset", "describe_tokens"]
