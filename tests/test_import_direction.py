"""The product stands without the lab: no module of dapb_mesh imports testbed/ or bench/ (the command line that
runs them may), and no import circle joins dapb_mesh modules. Every import counts, also one inside a function."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "dapb_mesh"
LAB = ("dapb_mesh.testbed", "dapb_mesh.bench")
MAY_IMPORT_THE_LAB = (*LAB, "dapb_mesh.cli")  # the lab itself, and the commands that run it


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def within(module: str, packages: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in packages)


def imports(module: str) -> dict[str, int]:
    """The dapb_mesh modules ``module`` imports, each with the line of its first import."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: dict[str, int] = {}
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            # `from pkg import mod` imports the module pkg.mod; `from mod import name` imports mod
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]
        else:
            continue
        for target in targets:
            if within(target, ("dapb_mesh",)) and target != module:
                found.setdefault(target, node.lineno)
    return found


GRAPH = {m: imports(m) for m in MODULES}


def test_the_product_never_imports_the_lab():
    arrows = [
        f"{MODULES[m].relative_to(PACKAGE.parent)}:{line} imports {target}"
        for m, targets in GRAPH.items()
        if not within(m, MAY_IMPORT_THE_LAB)
        for target, line in targets.items()
        if within(target, LAB)
    ]
    assert arrows == [], "the product imports the lab:\n" + "\n".join(arrows)


def cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(graph[root]))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, edges = work[-1]
            for nxt in edges:
                if nxt not in graph:
                    continue
                if nxt not in index:
                    index[nxt] = low[nxt] = len(index)
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, iter(graph[nxt])))
                    break
                if nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        found.append(sorted(component))
    return found


def test_no_import_circle_joins_two_modules():
    found = cycles(GRAPH)
    detail = [" <-> ".join(c) + ": " + "; ".join(f"{a} -> {b}" for a in c for b in GRAPH[a] if b in c) for c in found]
    assert found == [], "import circles:\n" + "\n".join(detail)


def test_the_checker_sees_imports_inside_functions_and_relative_ones():
    assert cycles({"a": {"b": 1}, "b": {"c": 1}, "c": {"a": 1}, "d": {"a": 1}}) == [["a", "b", "c"]]
    assert "dapb_mesh.kernel.libbpf" in GRAPH["dapb_mesh.doctor"]  # a top-level import
    assert "dapb_mesh.kernel.datapath" in GRAPH["dapb_mesh.doctor"]  # one inside check_dapb_object
