"""The package's shape: one `vqgpt` namespace, a CLI that answers without torch, stage
boundaries that hold."""

from __future__ import annotations

import ast
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "transformers", "datasets", "accelerate", "torchvision", "safetensors")


def _run(code: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=cwd, timeout=120)


@pytest.mark.parametrize("argv", [["--help"], ["train-prior", "--help"], ["sample", "--help"], ["tokenize", "--help"]])
def test_help_imports_no_heavy_library(tmp_path, argv):
    code = (
        "import sys\n"
        "from vqgpt.pipeline.cli import main\n"
        "try:\n"
        f"    main({argv!r})\n"
        "except SystemExit as e:\n"
        "    assert e.code == 0, e.code\n"
        f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))\n"
    )
    result = _run(code, tmp_path)  # run outside the repository: the installed package
    assert result.returncode == 0, result.stderr
    assert "usage: vqgpt" in result.stdout
    assert result.stdout.strip().splitlines()[-1] == "[]"


def test_import_vqgpt_is_light_and_names_load_on_use(tmp_path):
    code = (
        "import sys, vqgpt\n"
        f"assert not any(m in sys.modules for m in {HEAVY!r})\n"
        "assert vqgpt.VQGAN.__module__ == 'vqgpt.tokenizer.model'\n"
        "assert vqgpt.Pipeline.__module__ == 'vqgpt.pipeline.generate'\n"
        "assert callable(vqgpt.load_images) and callable(vqgpt.train_prior)\n"
        "print('ok')\n"
    )
    result = _run(code, tmp_path)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr


def test_wheel_installs_one_namespace_only(tmp_path):
    """A built wheel holds `vqgpt/...` and its metadata, nothing at top level that another
    project on the package index could own (`tokenizer`, `prior`, `pipeline`)."""
    result = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                             "-w", str(tmp_path), str(ROOT)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    (wheel,) = tmp_path.glob("vqgpt-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/", 1)[0] for n in names}
    assert tops == {"vqgpt", next(t for t in tops if t.endswith(".dist-info"))}, tops
    for module in ("vqgpt/__init__.py", "vqgpt/tokenizer/model.py", "vqgpt/prior/sampling.py",
                   "vqgpt/pipeline/cli.py", "vqgpt/pipeline/sources.py"):
        assert module in names, module
    assert not any(n.startswith(("vqgpt/tests", "vqgpt/scripts")) for n in names)


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names}
    return found


@pytest.mark.parametrize("stage, forbidden", [("tokenizer", ("prior", "pipeline")), ("prior", ("tokenizer", "pipeline"))])
def test_stages_do_not_import_each_other(stage, forbidden):
    for path in (ROOT / stage).glob("*.py"):
        for name in _imports(path):
            parts = name.split(".")
            bad = (parts[0] in forbidden) or (parts[0] == "vqgpt" and len(parts) > 1 and parts[1] in forbidden)
            assert not bad, f"{path.relative_to(ROOT)} imports {name}"


def test_no_top_level_stage_imports_anywhere():
    """Code, tests and scripts import the stages through `vqgpt.` only."""
    for folder in ("tokenizer", "prior", "pipeline", "tests", "scripts"):
        for path in (ROOT / folder).glob("*.py"):
            for name in _imports(path):
                assert name.split(".")[0] not in ("tokenizer", "prior", "pipeline"), f"{path.relative_to(ROOT)}: {name}"


def test_modules_read_in_one_sitting():
    for folder in ("tokenizer", "prior", "pipeline"):
        for path in (ROOT / folder).glob("*.py"):
            lines = len(path.read_text().splitlines())
            assert lines <= 450, f"{path.relative_to(ROOT)} has {lines} lines"
