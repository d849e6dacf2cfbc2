"""The package's imports run one way: a lower layer never imports a higher one, lazily or not.

Layers, lowest first (STYLE.md): the shared basics (constants, errors; then file and process
helpers); config; models and diffusion; data; sampling and evaluation; training and inference;
the benches; the commands, which dispatch to the benches too. Packages of one layer do not
import each other either (training and inference least of all). Every import statement counts,
at module level or inside a function.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "a2p"

LAYERS: list[tuple[str, ...]] = [
    ("constants", "errors", "version"),
    ("__init__", "fileio", "distributed"),
    ("config",),
    ("models", "diffusion"),
    ("data",),
    ("sampling", "evaluation"),
    ("training", "inference"),
    ("bench",),  # a benchmark runs library code, never a command's parsing
    ("cli",),
    ("__main__",),
]
RANK = {name: rank for rank, names in enumerate(LAYERS) for name in names}


def _room(path: Path) -> str:
    """The top-level module or sub-package of a2p a file belongs to."""
    return path.relative_to(PACKAGE).parts[0].removesuffix(".py")


def _imported(tree: ast.AST, path: Path) -> list[tuple[int, str]]:
    """(line, a2p sub-module) of every import in a file, relative imports resolved."""
    found = []
    package = path.relative_to(PACKAGE.parent).parent.parts  # ("a2p", "training") for a2p/training/x.py
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = ".".join(package[: len(package) - node.level + 1])
                module = f"{base}.{node.module}" if node.module else base
            else:
                module = node.module or ""
            if module == "a2p":  # `from a2p import distributed`
                found += [(node.lineno, f"a2p.{alias.name}") for alias in node.names]
            else:
                found.append((node.lineno, module))
    return [(line, name.split(".")[1]) for line, name in found if name.startswith("a2p.")]


def violations() -> list[str]:
    """Every import that runs against the layers, as `file:line: room -> room`."""
    rows = []
    for path in sorted(PACKAGE.rglob("*.py")):
        here = _room(path)
        if here not in RANK:
            rows.append(f"{path.relative_to(PACKAGE.parent)}: {here!r} has no layer in LAYERS")
            continue
        for line, there in _imported(ast.parse(path.read_text(), str(path)), path):
            if there == here:
                continue
            if there not in RANK:
                rows.append(
                    f"{path.relative_to(PACKAGE.parent)}:{line}: imports a2p.{there}, which has no layer"
                )
            elif RANK[there] >= RANK[here]:
                rows.append(f"{path.relative_to(PACKAGE.parent)}:{line}: {here} -> {there}")
    return rows


def test_every_import_runs_down_the_layers() -> None:
    rows = violations()
    assert not rows, "imports against the layers:\n" + "\n".join(rows)


@pytest.mark.parametrize(
    ("room", "source", "flagged"),
    [
        ("models", "def f():\n    from a2p.training import trainer\n", True),  # lazy, upwards
        ("training", "import a2p.inference.pipeline\n", True),  # same layer, other package
        ("inference", "from a2p import training\n", True),
        ("sampling", "from a2p.models.denoiser import Denoiser\n", False),
        ("training", "from a2p.training.tasks import Task\n", False),
    ],
)
def test_the_walk_sees_lazy_and_sideways_imports(tmp_path, monkeypatch, room, source, flagged) -> None:
    """The checker itself: a planted import is flagged exactly when it runs against the layers."""
    fake = tmp_path / "a2p"
    (fake / room).mkdir(parents=True)
    (fake / room / "planted.py").write_text(source)
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", fake)
    assert bool(violations()) == flagged


def test_loading_an_export_for_inference_imports_no_trainer_code() -> None:
    """What `a2p sample` imports to load and run exports holds nothing of `a2p.training`."""
    code = (
        "import sys, a2p.models.export, a2p.inference.job, a2p.cli.sample; "
        "print(sorted(m for m in sys.modules if m.startswith('a2p.training')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
