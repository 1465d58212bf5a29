"""Evaluation: the figures of a tokenizer and a prior under one printed protocol (``vqgpt evaluate``,
``vqgpt reconstruct``, the demo's check).

    from vqgpt.pipeline.evaluation import evaluate
    report = evaluate("all", run="demo-run")

- ``evaluate.py``: the entry point — tokenizer metrics (PSNR, SSIM, LPIPS, usage, rFID) and prior
  metrics (held-out bits per code, gFID, per class) on the held-out images ``held_out_split`` picks;
- ``reconstruct.py``: encode + decode those images, a side-by-side grid and the same metrics;
- ``fid.py``: the FID protocol (Inception features from a local file, Fréchet statistics);
- ``report.py``: the report's JSON schema, protocol line and table;
- ``digits.py``: an independent classifier's check of generated digits.

Reads images through ``vqgpt.pipeline.data``, samples through ``vqgpt.pipeline.generation``.
"""

from .evaluate import EVAL_TARGETS, Evaluator, Images, evaluate, evaluate_prior, evaluate_tokenizer
from .reconstruct import reconstruct, write_reconstruction_grid

__all__ = ["EVAL_TARGETS", "Evaluator", "Images", "evaluate", "evaluate_prior", "evaluate_tokenizer", "reconstruct",
           "write_reconstruction_grid"]
