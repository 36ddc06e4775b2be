"""What the package declares matches what it imports and ships."""

import ast
import sys
from importlib import metadata
from pathlib import Path

SRC = Path(__file__).parents[1] / "src" / "napari_sam"
# Import name -> distribution name, where they differ.
DISTRIBUTION = {"skimage": "scikit-image", "PIL": "pillow", "yaml": "pyyaml"}


def imported_top_level_modules() -> set[str]:
    names = set()
    for path in SRC.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return names - set(sys.stdlib_module_names) - {"napari_sam", "__future__"}


def declared() -> set[str]:
    requires = metadata.requires("napari-sam-labeler") or []
    runtime = [r for r in requires if "extra ==" not in r]
    return {r.split(";")[0].split("[")[0].split(">")[0].split("=")[0].strip().lower()
            for r in runtime}  # fmt: skip


def test_every_imported_package_is_a_declared_dependency():
    missing = {
        DISTRIBUTION.get(name, name).lower()
        for name in imported_top_level_modules()
        if DISTRIBUTION.get(name, name).lower() not in declared()
    }
    assert not missing, f"imported but not in [project].dependencies: {sorted(missing)}"


def test_runtime_dependencies_leave_out_torchvision_and_qt_bindings():
    assert not declared() & {"torchvision", "pyqt5", "pyqt6", "pyside2", "pyside6"}


def test_licence_file_is_shipped():
    assert (SRC.parents[1] / "LICENSE").read_text().startswith("BSD 3-Clause License")
    files = metadata.metadata("napari-sam-labeler").get_all("License-File") or []
    assert "LICENSE" in files  # from license-files in pyproject.toml
