"""The package's layering (README "Architecture"), checked on the source: every import,
module-level or inside a function, must go down the layers."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "picoalign"

# layer -> the picoalign layers it may import (besides itself). Top-level modules are layers
# of their own name (model, fileio, config, __init__, __main__).
LOWER = {"core", "model", "features", "data", "encoders", "fileio", "config", "evaluation",
         "inputs", "marks", "checkpoint", "numerics"}  # fmt: skip
ALLOWED: dict[str, set[str]] = {
    "core": set(),
    "fileio": set(),
    "progress": set(),
    "numerics": set(),
    "marks": set(),
    "data": {"fileio", "progress", "marks"},
    "encoders": {"core", "data"},
    "features": {"core", "data", "encoders", "fileio", "progress", "numerics"},
    "inputs": {"data"},
    "checkpoint": {"config", "fileio"},
    "model": {"core", "encoders", "data", "fileio", "config", "inputs", "checkpoint"},
    "config": {"core", "encoders", "data"},
    "evaluation": {"core", "model", "features", "inputs"},
    "retrieval": {
        "checkpoint",
        "inputs",
        "core",
        "model",
        "features",
        "data",
        "fileio",
        "evaluation",
        "config",
        "progress",
        "marks",
    },
    "training": {*LOWER, "progress"},
    "cli": {*LOWER, "retrieval", "training", "progress", "__init__"},
    "__init__": {"core", "model"},
    "__main__": {"cli"},
}


def layer(module: str) -> str:
    """``picoalign.core.pico`` → ``core``; ``picoalign`` → ``__init__``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def imports(path: Path) -> list[tuple[int, str]]:
    """Every picoalign module ``path`` imports (line, module), relative imports resolved."""
    rel = path.relative_to(SRC.parent).with_suffix("")
    package = list(rel.parts[:-1])
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # from .x import y / from . import y
                base = package[: len(package) - node.level + 1]
                name = ".".join([*base, *([node.module] if node.module else [])])
            else:
                name = node.module or ""
            if name == "picoalign":  # from picoalign import x: x is a module or a name
                found += [(node.lineno, f"picoalign.{a.name}") for a in node.names]
            else:
                found.append((node.lineno, name))
    return [(line, m) for line, m in found if m == "picoalign" or m.startswith("picoalign.")]


def violations() -> list[str]:
    out = []
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC.parent).with_suffix("")
        own = layer(".".join(rel.parts))
        for line, module in imports(path):
            other = layer(module)
            if other == "__version__" or other == own:
                continue
            if other not in ALLOWED.get(own, set()):
                out.append(f"{path.relative_to(SRC.parent)}:{line}: {own} imports {module}")
    return out


def test_every_import_goes_down_the_layers() -> None:
    assert violations() == []


def test_the_rules_catch_an_upward_import(tmp_path, monkeypatch) -> None:
    """The check itself can fail: a core module importing the CLI is reported."""
    fake = tmp_path / "picoalign"
    (fake / "core").mkdir(parents=True)
    (fake / "core" / "bad.py").write_text(
        "def f():\n    from picoalign.cli.commands import main\n    return main\n"
    )
    monkeypatch.setattr(sys.modules[__name__], "SRC", fake)
    assert violations() == ["picoalign/core/bad.py:2: core imports picoalign.cli.commands"]


@pytest.mark.parametrize("package", ["picoalign.core"])
def test_importing_the_core_loads_nothing_above_it(package: str) -> None:
    code = (
        f"import sys, {package}; "
        "print(sorted({m.split('.')[1] for m in sys.modules if m.startswith('picoalign.')}))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    loaded = set(eval(out))  # a printed list of names
    # (the package's __init__ names PicoAligner lazily: importing the core loads no model)
    above = {"model", "config", "data", "encoders", "features", "evaluation", "training",
             "retrieval", "cli"}  # fmt: skip
    assert not loaded & above, loaded


MAX_LINES = 400  # the developers' guide: no module over ~400 lines


def test_no_module_is_over_the_line_limit() -> None:
    """Split a module by concept when it grows past the limit (model.py, commands.py and
    retrieval/index.py each did), rather than letting one file hold several jobs."""
    long = {
        str(p.relative_to(SRC.parent)): n
        for p in SRC.rglob("*.py")
        if (n := len(p.read_text().splitlines())) > MAX_LINES
    }
    assert long == {}


def test_only_the_device_module_places_tensors_on_a_gpu() -> None:
    """No ``.cuda()`` in the library: a device is chosen once (training/devices.py) and
    passed on, so a CPU-only machine, ``mps`` and a chosen GPU index all work."""
    calls = [
        f"{p.relative_to(SRC.parent)}:{node.lineno}"
        for p in SRC.rglob("*.py")
        for node in ast.walk(ast.parse(p.read_text()))
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "cuda"
    ]
    assert calls == []
