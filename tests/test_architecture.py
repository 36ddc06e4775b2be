"""The package's layers: the scripting API loads no Qt and no napari, imports point down
(nothing below the widgets imports them), and no two modules import each other."""

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).parents[1] / "src" / "napari_sam"


def test_the_scripting_api_imports_neither_qt_nor_napari():
    code = """
import sys
from napari_sam import AnnotationSession, AutomaticMaskGenerator, SamPredictor, load_model
import napari_sam.automatic, napari_sam.interactive, napari_sam.training, napari_sam.zoo
session = AnnotationSession(load_model("tiny_cells"))
gui = sorted(m for m in sys.modules
             if m.split(".")[0] in {"qtpy", "PyQt5", "PyQt6", "PySide2", "PySide6", "napari"})
print(gui)
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, modules: set[str]) -> set[str]:
    """The package's modules that `path` imports, at any level of its code, except
    imports for type checking only."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    tree = ast.parse(path.read_text())
    skipped = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped |= {id(child) for child in ast.walk(node)}
    found = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module
            found.add(target)
            found |= {f"{target}.{alias.name}" for alias in node.names}
    return {m for m in found if m in modules and m != name}


def import_graph() -> dict[str, set[str]]:
    paths = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {name: imports_of(path, set(paths)) for name, path in paths.items()}


def test_no_import_cycle_anywhere_in_the_package():
    graph = import_graph()
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in sorted(graph[module]):
            if state.get(target) == 1:
                cycle = [*path[path.index(target) :], target] if target in path else [target]
                raise AssertionError(f"import cycle: {' -> '.join(cycle)}")
            if target not in state:
                visit(target, [*path, target])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])


def test_only_the_widgets_and_the_cli_import_the_widgets():
    graph = import_graph()
    upward = {
        module: sorted(t for t in targets if t.startswith("napari_sam._qt"))
        for module, targets in graph.items()
        if not module.startswith("napari_sam._qt") and module != "napari_sam.cli"
    }
    assert {m: t for m, t in upward.items() if t} == {}
