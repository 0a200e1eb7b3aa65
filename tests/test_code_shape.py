"""The shape of the code: small files and functions, and imports that only point down the data flow.

docs/architecture.md draws the layers; this test keeps the code and the picture in agreement.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "superlora"
MAX_FILE_LINES = 500
MAX_FUNCTION_LINES = 80

# Lower layers never import higher ones (docs/architecture.md, "Layers"). Same-layer imports are allowed.
LAYERS = {
    "errors": 0, "files": 0, "defaults": 0,
    "config": 1, "base_models": 1, "data": 1, "runs": 1, "study": 1,
    "functional": 2, "targets": 2,
    "counting": 3, "adapter": 3,
    "layers": 4,
    "model": 5,
    "": 6,  # the package root (superlora/__init__.py): the public API
    "inference": 6, "export": 6, "viz": 6, "controls": 6, "suggestions": 6,
    "train": 7,
    "diffusion": 8, "report": 8,
    "cli": 9, "widgets": 9, "studio": 9, "__main__": 9,
}


def _sources() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def _unit(module: str) -> str:
    """`superlora.train.loop` -> `train`; `superlora` -> `` (the root)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _own_unit(path: Path) -> str:
    relative = path.relative_to(PACKAGE).with_suffix("")
    return "" if relative.parts == ("__init__",) else relative.parts[0]


def _imported_units(tree: ast.AST) -> set[str]:
    units = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "superlora":
            if node.module == "superlora":
                units.update(alias.name for alias in node.names if alias.name in LAYERS)
                if any(alias.name not in LAYERS for alias in node.names):
                    units.add("")
            else:
                units.add(_unit(node.module))
        elif isinstance(node, ast.Import):
            units.update(_unit(alias.name) for alias in node.names if alias.name.split(".")[0] == "superlora")
    return units


def test_every_unit_of_the_package_has_a_layer():
    units = {_own_unit(path) for path in _sources()}
    assert units <= set(LAYERS), f"add {sorted(units - set(LAYERS))} to LAYERS and to docs/architecture.md"


def test_no_file_over_500_lines():
    long = {str(p.relative_to(PACKAGE)): n for p in _sources() if (n := len(p.read_text().splitlines())) > MAX_FILE_LINES}
    assert long == {}


def test_no_function_over_80_lines():
    long = {}
    for path in _sources():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    long[f"{path.relative_to(PACKAGE)}:{node.name}"] = length
    assert long == {}


def _study_sources() -> list[Path]:
    """The benchmark studies keep the package's limits too: their shared parts and packages, and their CLIs."""
    benchmarks = PACKAGE.parent / "benchmarks"
    return sorted([*(benchmarks / "study").rglob("*.py"),
                   *(benchmarks / name for name in ("pareto.py", "diffusion_transfer.py", "peft_baselines.py"))])


def test_the_benchmark_studies_keep_the_same_limits():
    long = {}
    for path in _study_sources():
        text = path.read_text()
        if len(text.splitlines()) > MAX_FILE_LINES:
            long[path.name] = len(text.splitlines())
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and \
                    node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES:
                long[f"{path.name}:{node.name}"] = node.end_lineno - node.lineno + 1
    assert len(_study_sources()) > 10 and long == {}


def test_imports_only_point_down_the_layers():
    upward = []
    for path in _sources():
        own = _own_unit(path)
        for unit in _imported_units(ast.parse(path.read_text())):
            if unit in LAYERS and LAYERS[unit] > LAYERS[own]:
                upward.append(f"{path.relative_to(PACKAGE)} imports superlora.{unit or '(root)'}")
    assert upward == []


def test_the_layer_check_sees_an_upward_import():
    tree = ast.parse("from superlora.studio import build_app\nimport superlora.train.loop\nfrom superlora import model")
    assert _imported_units(tree) == {"studio", "train", "model"}
    assert LAYERS["studio"] > LAYERS["model"] > LAYERS["config"]
