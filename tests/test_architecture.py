"""The package's shape: Qt and napari only in the views, no import cycles."""

from __future__ import annotations

import ast
from pathlib import Path

import napari_cryo

PACKAGE = Path(napari_cryo.__file__).parent
GUI_ROOTS = {"napari", "magicgui", "qtpy", "PyQt5", "PyQt6", "PySide2", "PySide6", "superqt", "vispy"}
# The views, the shared view base, the demo that opens a viewer, and the plots that draw on a Qt canvas.
GUI_ALLOWED = {"_view.py", "cli/demo.py", "plots.py"}


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _imports(name: str, path: Path) -> list[tuple[str, int, bool]]:
    """(imported module, line, at module level) for every import in a file, relative ones resolved."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    top_level = {id(node) for node in tree.body}
    guarded = set()
    for node in tree.body:  # `if TYPE_CHECKING:` imports never run
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            guarded |= {id(n) for n in ast.walk(node)}
    found = []
    for node in ast.walk(tree):
        if id(node) in guarded:
            continue
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno, id(node) in top_level) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                parts = parts[: len(parts) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            if node.module is None or node.level:
                # `from . import x` may name submodules
                found += [(f"{base}.{alias.name}", node.lineno, id(node) in top_level) for alias in node.names]
            found.append((base, node.lineno, id(node) in top_level))
    return found


def _is_view(rel: str) -> bool:
    return rel.endswith("_widget.py") or rel in GUI_ALLOWED or rel.startswith("cli/demo_")  # the demo's workflows drive the widgets


def test_only_views_import_qt_napari_or_magicgui():
    offenders = []
    for name, path in _modules().items():
        rel = path.relative_to(PACKAGE).as_posix()
        if _is_view(rel):
            continue
        for module, line, _ in _imports(name, path):
            if module.split(".")[0] in GUI_ROOTS:
                offenders.append(f"{rel}:{line} imports {module}")
    assert not offenders, "Qt/napari/magicgui outside the views:\n" + "\n".join(offenders)


def test_no_import_cycles():
    modules = _modules()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        deps = set()
        for module, _, _ in _imports(name, path):
            # Count an import of a module or anything in it; a package's own __init__ is not a dependency of its children.
            while module and module not in modules:
                module = module.rpartition(".")[0]
            if module and module != name and not name.startswith(module + "."):
                deps.add(module)
        graph[name] = deps

    cycles = []
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                cycles.append(" -> ".join(stack[stack.index(dep):] + [dep]))
            elif dep not in state:
                visit(dep)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_no_capability_imports_another_capabilitys_view():
    capabilities = {"picking", "squares", "segmentation", "reconstruction"}
    offenders = []
    for name, path in _modules().items():
        parts = name.split(".")
        own = parts[1] if len(parts) > 1 else None
        for module, line, _ in _imports(name, path):
            target = module.split(".")
            if len(target) > 2 and target[0] == "napari_cryo" and target[1] in capabilities and target[1] != own and target[2].endswith("_widget"):
                offenders.append(f"{name}:{line} imports {module}")
    assert not offenders, "\n".join(offenders)


def test_the_scan_sees_imports_inside_functions(tmp_path):
    source = tmp_path / "mod.py"
    source.write_text("def f():\n    from napari.utils import progress\n    from ..tasks import Progress\n")
    found = _imports("napari_cryo.picking.mod", source)
    assert ("napari.utils", 2, False) in found
    assert ("napari_cryo.tasks", 3, False) in found
