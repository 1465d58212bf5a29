"""The ``vqgpt`` command: ``parser.py`` builds the flags from the torch-free settings and runs the
entry point; ``verbs.py`` holds one function per verb, each a thin layer over the library. Nothing
imports the command line; it imports every other job of the pipeline."""

from .parser import build_parser, main

__all__ = ["main", "build_parser"]
