"""The house rules of docs/architecture.md ("Where to change what"), checked on the source: who
may import whom, and no import circle (function-level imports included)."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def _imports() -> dict[str, set[str]]:
    """Every module of mlasm/ and widgets/ -> the modules of the project it imports, anywhere in it."""
    modules = {}
    for path in sorted((REPO / "mlasm").rglob("*.py")) + sorted((REPO / "widgets").rglob("*.py")):
        parts = path.relative_to(REPO).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    graph = {name: set() for name in modules}
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
            else:
                continue
            graph[name] |= {target for target in targets if target in modules and target != name}
    return graph


GRAPH = _imports()


def _circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected groups of more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_the_circle_finder_finds_a_circle():
    assert _circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _circles({"a": {"b"}, "b": set()}) == []


def test_no_import_circle():
    assert _circles(GRAPH) == []


@pytest.mark.parametrize("module, may_not_import", [
    ("mlasm", "widgets"),            # the library never imports its views
    ("mlasm.data", "mlasm.model"),   # data knows nothing of the model
    ("mlasm.data", "mlasm.train"),
    ("mlasm.model", "mlasm.data"),   # the model reads tensors, not files
    ("mlasm.model", "mlasm.evaluate"),
])
def test_who_may_import_whom(module, may_not_import):
    offenders = {name: sorted(t for t in targets if t == may_not_import or t.startswith(may_not_import + "."))
                 for name, targets in GRAPH.items() if name == module or name.startswith(module + ".")}
    assert {name: found for name, found in offenders.items() if found} == {}


def test_the_analysis_imports_no_widgets_library():
    """The session (failures, queries, ranks, explanations) and the model comparison work without ipywidgets."""
    import subprocess
    import sys

    code = ("import sys; sys.modules['ipywidgets'] = None; sys.modules['plotly'] = None\n"
            "import mlasm.session, mlasm.compare, mlasm.attention_stats, mlasm.explain; print('ok')")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]
