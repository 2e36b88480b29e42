"""Modules flow one way (DESIGN.md: cli -> pipelines -> selectors / inputs -> embeddings,
index, records -> config): the import graph of tamis's sources has no cycle."""

import ast
from pathlib import Path

import tamis

SOURCES = Path(tamis.__file__).parent


def module_names() -> dict[str, tuple[Path, bool]]:
    modules = {}
    for path in SOURCES.rglob("*.py"):
        parts = list(path.relative_to(SOURCES.parent).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        modules[".".join(parts[:-1] if is_package else parts)] = (path, is_package)
    return modules


def import_graph() -> dict[str, set[str]]:
    """module -> the tamis modules its import statements name (function-level ones too)."""
    modules = module_names()
    graph = {}
    for name, (path, is_package) in modules.items():
        package = name if is_package else name.rsplit(".", 1)[0]
        edges = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                edges |= {a.name for a in node.names if a.name in modules}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(parent + ([base] if base else []))
                for alias in node.names:
                    full = f"{base}.{alias.name}"
                    edges.add(full if full in modules else base)
        graph[name] = {e for e in edges if e in modules and e != name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the stack, 2: done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for child in sorted(graph[node]):
            if state.get(child) == 1:
                return stack[stack.index(child) :] + [child]
            if child not in state and (cycle := visit(child)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_import_graph_is_acyclic():
    graph = import_graph()
    assert len(graph) > 40 and "tamis.pipelines.stage" in graph
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_cycle_finder_finds_a_planted_cycle():
    graph = import_graph()
    graph["tamis.config"] = graph["tamis.config"] | {"tamis.cli"}  # config importing the CLI
    assert find_cycle(graph) is not None


def test_inputs_know_no_selector_and_selectors_no_pipeline():
    graph = import_graph()
    for name, edges in graph.items():
        if name.startswith("tamis.inputs"):
            assert not {e for e in edges if e.startswith("tamis.selectors")}, name
        if name.startswith(("tamis.selectors", "tamis.inputs")):
            assert not {e for e in edges if e.startswith(("tamis.pipelines", "tamis.cli"))}, name
