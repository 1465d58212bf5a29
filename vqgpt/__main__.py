"""``python -m vqgpt`` is the ``vqgpt`` command (handy under ``torchrun``/``accelerate launch``)."""

import sys

from vqgpt.pipeline.cli import main

sys.exit(main())
