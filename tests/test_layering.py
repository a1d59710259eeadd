"""The package layering of docs/architecture.md, enforced on the source (AST, no imports run).

Higher layers may import lower ones; packages in one layer are independent of each other;
nothing below ``lit`` imports Lightning, Hydra, OmegaConf or W&B. Function-level (lazy)
imports count like module-level ones. A new package must be placed in :data:`LAYERS` (and in
docs/architecture.md) before it can be imported from anywhere.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "dlqsm"

LAYERS: list[set[str]] = [
    {"cli"},
    {"lit", "evaluation", "study"},
    {"inference"},
    {"models", "metrics", "simulation"},
    {"pipeline"},
    {"io"},
    {"physics"},
    {"configs"},
    {"errors", "benchmarking", "assets", "__init__"},
]
"""Top to bottom. ``__init__`` is ``dlqsm/__init__.py`` (the version)."""

TRAINING_ONLY = {"lightning", "pytorch_lightning", "hydra", "omegaconf", "wandb"}
"""Third-party packages only ``lit`` and ``cli`` may import."""
TRAINING_LAYERS = {"lit", "cli"}

EXCEPTIONS: dict[tuple[str, str], str] = {
    ("dlqsm.evaluation.independent_suite", "dlqsm.cli.main"):
        "the independent evaluation suite runs the dlqsm command line end to end; it belongs "
        "in a layer above cli (scripts/ or a cli-level module)",
}
"""(importing module, imported module) pairs allowed despite the layers, with the reason."""


def _layer(package: str) -> int | None:
    for i, layer in enumerate(LAYERS):
        if package in layer:
            return i
    return None


def _module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__" and len(parts) > 1:
        parts = parts[:-1]
    return ".".join(parts)


def _package(module: str) -> str:
    """``dlqsm.io.nifti`` -> ``io``; ``dlqsm`` -> ``__init__``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _imports(path: Path, module: str):
    """(imported module, line) of every import in a file, relative ones resolved; imports in
    module-level ``__getattr__`` (deprecation shims for moved names) are skipped."""
    tree = ast.parse(path.read_text(), filename=str(path))
    shims = {id(n) for f in tree.body if isinstance(f, ast.FunctionDef)
             and f.name == "__getattr__" for n in ast.walk(f)}
    is_pkg = path.name == "__init__.py"
    for node in ast.walk(tree):
        if id(node) in shims:
            continue
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")
                base = base if is_pkg else base[:-1]
                base = base[:len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            yield target, node.lineno
            for alias in node.names:  # `from dlqsm import lit` imports the package lit
                if target == "dlqsm" and not alias.name.startswith("__"):
                    yield f"dlqsm.{alias.name}", node.lineno


def violations(root: Path = PACKAGE) -> list[str]:
    """Every import in the package ``root`` that breaks the layering, one line each."""
    found = []
    for path in sorted(root.rglob("*.py")):
        module = _module_name(path, root)
        src = _package(module)
        src_layer = _layer(src)
        where = f"{path.relative_to(root.parent)}"
        if src_layer is None:
            found.append(f"{where}: package {src!r} is not in LAYERS")
            continue
        for target, line in _imports(path, module):
            top = target.split(".")[0]
            if top in TRAINING_ONLY and src not in TRAINING_LAYERS:
                found.append(f"{where}:{line}: {src} imports {top} (only lit and cli may)")
            if top != "dlqsm" or (target, "") == ("dlqsm", ""):
                continue
            dst = _package(target)
            if dst == src or (module, target) in EXCEPTIONS:
                continue
            dst_layer = _layer(dst)
            if dst_layer is None:
                found.append(f"{where}:{line}: imports {target}, whose package is not in LAYERS")
            elif dst_layer <= src_layer:
                kind = "a sibling" if dst_layer == src_layer else "a higher layer"
                found.append(f"{where}:{line}: {src} imports {target} ({kind})")
    return found


def test_the_package_follows_its_layers():
    assert violations() == []


def test_every_package_is_placed():
    packages = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()}
    packages |= {p.stem for p in PACKAGE.glob("*.py")}
    packages |= {p.name for p in PACKAGE.iterdir() if p.is_dir() and p.name == "assets"}
    assert {p for p in packages if _layer(p) is None} == set()


def test_exceptions_are_still_needed():
    """An exception that no longer matches an import is stale: remove it."""
    seen = set()
    for path in PACKAGE.rglob("*.py"):
        module = _module_name(path, PACKAGE)
        seen |= {(module, t) for t, _ in _imports(path, module)}
    assert set(EXCEPTIONS) <= seen


@pytest.fixture
def fake_package(tmp_path):
    root = tmp_path / "dlqsm"
    for pkg in ("physics", "pipeline", "lit", "models", "metrics"):
        (root / pkg).mkdir(parents=True)
        (root / pkg / "__init__.py").write_text("")
    (root / "__init__.py").write_text('__version__ = "0"\n')

    def write(rel: str, text: str) -> None:
        (root / rel).write_text(text)

    return root, write


def test_a_deliberate_violation_is_caught(fake_package):
    root, write = fake_package
    write("pipeline/ok.py", "from dlqsm.physics import x\nimport torch\n")
    write("lit/ok.py", "import lightning\nfrom dlqsm.models import y\n")
    assert violations(root) == []
    write("physics/up.py", "def f():\n    from dlqsm.lit.module import QSMLitModule\n")
    write("pipeline/hydra_use.py", "import hydra\n")
    write("models/sibling.py", "from ..metrics import z\n")  # relative, same layer
    write("metrics/rel_ok.py", "from . import functional\nfrom ..physics import dipole\n")
    found = violations(root)
    assert len(found) == 3, found
    assert any("physics imports dlqsm.lit.module (a higher layer)" in f for f in found)
    assert any("pipeline imports hydra" in f for f in found)
    assert any("models imports dlqsm.metrics (a sibling)" in f for f in found)


def test_an_unplaced_package_is_caught(fake_package):
    root, write = fake_package
    (root / "newpkg").mkdir()
    write("newpkg/__init__.py", "")
    write("models/uses_new.py", "import dlqsm.newpkg\n")
    found = violations(root)
    assert any("'newpkg' is not in LAYERS" in f for f in found)
    assert any("dlqsm.newpkg, whose package is not in LAYERS" in f for f in found)
