"""The package's layers point down only: no import cycles, exporters/ depends only on compress.core,
and every module imports on its own in a fresh interpreter."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("compress", "exporters")

# Who may import whom (by layer), lazily or not: CLI -> api/pipeline -> {training, speed, exporters, ort} ->
# pruning -> core. Sideways imports inside the middle layer are allowed where listed.
ALLOWED = {
    "compress.core": {"compress.core"},
    "compress.pruning": {"compress.core", "compress.pruning"},
    "compress.training": {"compress.core", "compress.pruning", "compress.training", "compress.speed", "exporters"},
    # latency tables are timed on our own export + surgery (+ quantize) graphs of the user's model
    "compress.speed": {
        "compress.core",
        "compress.pruning",
        "compress.speed",
        "compress.training",
        "compress.ort",
        "exporters",
    },
    "compress.ort": {"compress.core", "compress.ort", "compress.training", "exporters"},
    "exporters": {"compress.core", "exporters"},
}


def modules() -> dict[str, Path]:
    found = {}
    for pkg in PACKAGES:
        for path in (ROOT / pkg).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            if parts[-1] == "__main__":
                continue
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found[name] = path
    return found


def imports(path: Path, known: set[str]) -> set[str]:
    """Project modules imported anywhere in the file (function-level imports count too)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        out.update(n for n in names if n in known)
    return out


def graph() -> dict[str, set[str]]:
    mods = modules()
    return {name: imports(path, set(mods)) - {name} for name, path in mods.items()}


def layer(module: str) -> str | None:
    return next((k for k in sorted(ALLOWED, key=len, reverse=True) if module == k or module.startswith(k + ".")), None)


def test_no_import_cycles():
    g = graph()
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []

    def visit(v):  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in g[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.add(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in g:
        if v not in index:
            visit(v)
    assert not cycles, f"import cycles: {cycles}"


def test_layers_point_down():
    bad = []
    for mod, deps in graph().items():
        own = layer(mod)
        if own is None:
            continue  # api, pipeline, report, cli: top layers
        for dep in deps:
            if not any(dep == a or dep.startswith(a + ".") for a in ALLOWED[own]):
                bad.append(f"{mod} -> {dep}")
    assert not bad, "imports against the layering: " + ", ".join(sorted(bad))


def test_every_module_imports_alone():
    names = sorted(modules())
    code = "import importlib, sys\nfor n in sys.argv[1:]:\n    importlib.import_module(n)\n"
    r = subprocess.run([sys.executable, "-c", code, *names], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
