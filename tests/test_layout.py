"""The package's shape: one `vqgpt` namespace, a CLI that answers without torch, stage
boundaries that hold."""

from __future__ import annotations

import ast
import re
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
        "assert vqgpt.Pipeline.__module__ == 'vqgpt.pipeline.generation.pipeline'\n"
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
    for module in ("vqgpt/__init__.py", "vqgpt/checkpoints.py", "vqgpt/tokenizer/model.py", "vqgpt/prior/sampling.py",
                   "vqgpt/pipeline/cli/parser.py", "vqgpt/pipeline/data/load.py", "vqgpt/pipeline/tokens/shards.py",
                   "vqgpt/pipeline/generation/pipeline.py", "vqgpt/pipeline/evaluation/evaluate.py"):
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
    for path in (ROOT / stage).rglob("*.py"):
        for name in _imports(path):
            parts = name.split(".")
            bad = (parts[0] in forbidden) or (parts[0] == "vqgpt" and len(parts) > 1 and parts[1] in forbidden)
            assert not bad, f"{path.relative_to(ROOT)} imports {name}"


def test_no_top_level_stage_imports_anywhere():
    """Code, tests and scripts import the stages through `vqgpt.` only."""
    for folder in ("tokenizer", "prior", "pipeline", "tests", "scripts"):
        for path in (ROOT / folder).rglob("*.py"):
            for name in _imports(path):
                assert name.split(".")[0] not in ("tokenizer", "prior", "pipeline"), f"{path.relative_to(ROOT)}: {name}"


def test_modules_read_in_one_sitting():
    for folder in ("vqgpt", "tokenizer", "prior", "pipeline"):
        for path in (ROOT / folder).rglob("*.py"):
            lines = len(path.read_text().splitlines())
            assert lines <= 420, f"{path.relative_to(ROOT)} has {lines} lines"


# --------------------------------------------------------------------------- import direction

PACKAGES = {"vqgpt": ROOT / "vqgpt", "vqgpt.tokenizer": ROOT / "tokenizer", "vqgpt.prior": ROOT / "prior",
            "vqgpt.pipeline": ROOT / "pipeline"}


def _modules() -> dict[str, Path]:
    """Every module of the installed namespace: dotted name → file."""
    found = {}
    for package, folder in PACKAGES.items():
        for path in folder.rglob("*.py"):
            rel = path.relative_to(folder).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            if package == "vqgpt" and parts and parts[0] == "__main__":
                continue  # the `python -m vqgpt` entry: it runs the command line
            found[".".join([package, *parts])] = path
    return found


def _module_imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """Modules of ours that ``name`` imports anywhere in its body (functions included), resolved."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            targets = [f"{base}.{a.name}" for a in node.names] + [base]
        for target in targets:
            while target and target not in modules:  # `from x import name` → the module x
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def _job(module: str) -> str | None:
    """The job of a pipeline module: its sub-package, or the top-level module's name."""
    parts = module.split(".")
    return parts[2] if parts[:2] == ["vqgpt", "pipeline"] and len(parts) > 2 else None


# data ← tokens, codec ← generation ← evaluation ← command line; the demo uses all but the command line;
# settings (torch-free) and derived (defaults from the data) sit beside data.
ALLOWED = {
    "settings": set(),
    "data": set(),
    "derived": {"data"},
    "tokens": {"data", "settings", "derived"},
    "codec": {"data"},
    "generation": {"data", "settings", "codec"},
    "evaluation": {"data", "settings", "generation", "codec"},
    "demo": {"data", "settings", "tokens", "generation", "codec", "evaluation"},
    "cli": {"data", "settings", "derived", "tokens", "generation", "codec", "evaluation", "demo"},
}


def test_pipeline_jobs_import_in_one_direction():
    modules = _modules()
    jobs = {_job(m) for m in modules} - {None}
    assert jobs == set(ALLOWED), f"a job without a rule: {jobs ^ set(ALLOWED)}"
    for name, path in modules.items():
        job = _job(name)
        for target in _module_imports(name, path, modules):
            other = _job(target)
            if job is None or other is None or other == job:
                continue
            assert other in ALLOWED[job], f"{name} ({job}) imports {target} ({other}): against the import direction"
            assert other != "cli", f"{name} imports the command line"


def test_no_import_circle_anywhere():
    """Not even through imports inside functions: every module can be read knowing only what it imports."""
    modules = _modules()
    graph = {name: _module_imports(name, path, modules) for name, path in modules.items()}
    # a package's __init__ re-exports its modules: an edge into a package is an edge into what it re-exports,
    # and a module importing its own package's __init__ is no circle of meaning, so packages are not nodes
    packages = {name for name, path in modules.items() if path.name == "__init__.py"}
    edges = {name: {t for t in targets if t not in packages} for name, targets in graph.items() if name not in packages}
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                raise AssertionError("import circle: " + " → ".join(trail[trail.index(nxt):] + [node, nxt]) if nxt in trail
                                     else f"import circle: {node} → {nxt}")
            if nxt not in state:
                visit(nxt, trail + [node])
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node, [])


def test_only_the_command_line_names_flags():
    """Library errors name parameters (in backticks); flags appear only in the command line's code."""
    pattern = re.compile(r"""(?:raise \w+\(|logger\.\w+\()\s*f?["'][^"']*?(?<![\w-])--[a-z]""")
    for folder in ("tokenizer", "prior", "pipeline"):
        for path in (ROOT / folder).rglob("*.py"):
            if path.parent.name == "cli" or path.name == "settings.py" and "parse_sets" in path.read_text():
                continue
            for number, line in enumerate(path.read_text().splitlines(), 1):
                assert not pattern.search(line), f"{path.relative_to(ROOT)}:{number} names a flag: {line.strip()}"
