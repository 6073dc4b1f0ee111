"""The package's layers point down only: no import cycles, exporters/ depends only on compress.core,
and every module imports on its own, with no other project module imported before it.

Importing `compress.x.y` first runs `compress/__init__.py` and `compress/x/__init__.py`, so the import
graph here has those edges too (except to the importer's own parent packages, which are always being
initialised already when it runs). A package's PEP 562 `__getattr__` loads its names on attribute
access, never at import, so it adds no edge.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("compress", "exporters")

# Who may import whom (by layer), lazily or not: CLI -> api/pipeline -> {training, speed, exporters, ort} ->
# pruning -> core. Sideways imports inside the middle layer are allowed where listed.
ALLOWED = {
    "compress.core": {"compress.core"},
    "compress.pruning": {"compress.core", "compress.pruning"},
    "compress.training": {
        "compress.core",
        "compress.pruning",
        "compress.training",
        "compress.speed",
        "compress.tasks",
        "exporters",
    },
    # one module per task type (data, model, loss, metrics); the registry in compress.training reads them
    "compress.tasks": {"compress.core", "compress.tasks", "exporters"},
    # latency tables are timed on our own export + surgery (+ quantize) graphs of the user's model
    "compress.speed": {
        "compress.core",
        "compress.pruning",
        "compress.speed",
        "compress.training",
        "compress.ort",
        "exporters",
    },
    "compress.ort": {"compress.core", "compress.ort", "compress.training", "compress.tasks", "exporters"},
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


def parents(module: str) -> list[str]:
    """The packages whose __init__ runs before `module`: a.b.c -> [a, a.b]."""
    parts = module.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def graph() -> dict[str, tuple[set[str], set[str]]]:
    """module -> (what it imports, the parent packages of those that it is not inside itself)."""
    mods = modules()
    out = {}
    for name, path in mods.items():
        explicit = imports(path, set(mods)) - {name}
        inside = {name, *parents(name)}
        implicit = {p for dep in explicit for p in parents(dep) if p in mods} - inside - explicit
        out[name] = (explicit, implicit)
    return out


def layer(module: str) -> str | None:
    return next((k for k in sorted(ALLOWED, key=len, reverse=True) if module == k or module.startswith(k + ".")), None)


def test_no_import_cycles():
    g = {mod: explicit | implicit for mod, (explicit, implicit) in graph().items()}
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
    g = graph()

    def runs(package: str, seen: set[str]) -> set[str]:
        """What importing `package` implicitly runs: its __init__'s imports, and its own parents'."""
        if package in seen:
            return set()
        seen.add(package)
        explicit, implicit = g[package]
        return explicit | {m for p in implicit for m in runs(p, seen)}

    bad = []
    for mod, (explicit, implicit) in g.items():
        own = layer(mod)
        if own is None:
            continue  # api, pipeline, report, cli: top layers
        deps = {(dep, dep) for dep in explicit}
        deps |= {(dep, f"{pkg}/__init__ -> {dep}") for pkg in implicit for dep in runs(pkg, set())}
        for dep, how in deps:
            if not any(dep == a or dep.startswith(a + ".") for a in ALLOWED[own]):
                bad.append(f"{mod} -> {how}")
    assert not bad, "imports against the layering: " + ", ".join(sorted(bad))


# Imports each module named in argv in a child forked from this interpreter, which has loaded only
# third-party libraries: no project module is loaded before the one under test, so a cycle or a reliance
# on import order fails as in a fresh interpreter, without paying torch's 1.5 s import once per module.
_FORK_IMPORTER = r"""
import importlib, os, sys
for lib in ("numpy", "onnx", "torch", "transformers"):
    importlib.import_module(lib)
assert not [m for m in sys.modules if m.split(".")[0] in ("compress", "exporters")], "project module loaded"
failed = []
for name in sys.argv[1:]:
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
        try:
            importlib.import_module(name)
            msg = ""
        except BaseException as e:
            msg = f"{type(e).__name__}: {e}"
        os.write(w, msg.encode())
        os._exit(0)
    os.close(w)
    with os.fdopen(r) as f:
        msg = f.read()
    _, status = os.waitpid(pid, 0)
    if msg or status:
        failed.append(f"{name}: {msg or f'child exited with status {status}'}")
print("\n".join(failed))
sys.exit(1 if failed else 0)
"""


def _import_each(names: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", _FORK_IMPORTER, *names], cwd=ROOT, capture_output=True, text=True)


def test_every_module_imports_alone():
    """Each module in a process of its own in which no other project module was imported before it: an
    import cycle or a reliance on import order fails here even when another module imported first
    would hide it. The modules are shared out over one importer per core."""
    names = sorted(modules())
    workers = max(1, min(os.cpu_count() or 1, 4))
    with ThreadPoolExecutor(workers) as pool:
        runs = list(pool.map(_import_each, [names[i::workers] for i in range(workers)]))
    assert all(r.returncode == 0 for r in runs), "\n".join(
        r.stdout.strip() or r.stderr[-2000:] for r in runs if r.returncode
    )


def test_package_api_loads_lazily():
    """compress.core.errors (which every layer imports) does not load the API, and the lazily loaded
    names are exactly compress.api's public ones."""
    code = (
        "import sys, compress.core.errors\n"
        "assert 'compress.api' not in sys.modules, 'compress/__init__ imports the API eagerly'\n"
        "import compress, compress.api\n"
        "extra = {'__version__', 'CompressError', 'LayerKeep'}\n"
        "assert sorted(compress.__all__) == sorted(extra | set(compress.api.__all__)), compress.__all__\n"
        "assert all(getattr(compress, n) is not None for n in compress.__all__)\n"
        "assert set(compress.__all__) <= set(dir(compress))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
