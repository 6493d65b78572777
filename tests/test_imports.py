"""The package's import graph: no circles, and no imports hidden in functions (a function-level
import is how a circle gets dodged). Module-level ``try: import x`` of an optional dependency is
fine."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "elastic_lab"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imported(name: str, path: Path, node: ast.AST) -> set[str]:
    """The package modules an import statement of module ``name`` loads."""
    if isinstance(node, ast.Import):
        targets = {a.name for a in node.names}
    else:
        base = node.module or ""
        if node.level:
            package = name if path.name == "__init__.py" else name.rpartition(".")[0]
            for _ in range(node.level - 1):
                package = package.rpartition(".")[0]
            base = f"{package}.{base}" if base else package
        targets = {base} | {f"{base}.{a.name}" for a in node.names}
    return {t for t in targets if t in MODULES and t != name}


def graph() -> dict[str, set[str]]:
    edges = {}
    for name, path in MODULES.items():
        tree = ast.parse(path.read_text())
        edges[name] = set().union(*(imported(name, path, n) for n in ast.walk(tree)
                                    if isinstance(n, (ast.Import, ast.ImportFrom))))
    return edges


def test_no_import_inside_a_function_or_class():
    hidden = []
    for name, path in MODULES.items():
        tree = ast.parse(path.read_text())
        for scope in ast.walk(tree):
            if isinstance(scope, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                hidden += [f"{name}:{n.lineno}" for n in ast.walk(scope)
                           if isinstance(n, (ast.Import, ast.ImportFrom))]
    assert not hidden, f"function-level imports: {hidden}"


def test_the_package_has_no_import_circle():
    edges = graph()
    assert "elastic_lab.train" in edges["elastic_lab.experiments"]  # the graph sees imports
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(edges[node]):
            if state.get(nxt) == 1:
                cycle = path[path.index(nxt):] + [nxt]
                raise AssertionError("import circle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for module in sorted(edges):
        if module not in state:
            visit(module, [module])
