"""vqgpt's pipeline: data sources, tokenizing datasets, sampling + decoding, the CLI."""

from .data import ImageSource, load_images
from .pipeline import Pipeline, SampleConfig

__all__ = ["Pipeline", "SampleConfig", "ImageSource", "load_images"]
