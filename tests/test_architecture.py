"""The house stays acyclic: no module of mmvae imports, directly or through others, a module that imports it; and
dependencies point one way, down the layers of DESIGN.md.

Imports are read with `ast` from the source (module-level and function-level alike; `if TYPE_CHECKING:` blocks
too), so a cycle hidden inside a function body fails here even though Python would tolerate it at run time.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "mmvae"


def module_name(path: Path) -> str:
    """mmvae/objectives/base.py -> "mmvae.objectives.base"; a package's __init__.py -> the package."""
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    """Every module of the package, by dotted name."""
    return {module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """The mmvae modules that `name` imports anywhere in its source."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            # `from pkg import sub` imports the submodule pkg.sub; `from pkg import name` imports pkg
            targets = [f"{mod}.{a.name}" if f"{mod}.{a.name}" in known else mod for a in node.names]
        else:
            continue
        for t in targets:
            while t and t not in known:  # `import mmvae.datasets.idx as m` -> the module itself
                t = t.rpartition(".")[0]
            if t and t != name:
                found.add(t)
    return found


def import_graph() -> dict[str, set[str]]:
    mods = modules()
    known = set(mods)
    return {name: imports_of(name, path, known) for name, path in mods.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each as a sorted list."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_the_package_has_no_import_cycle():
    graph = import_graph()
    assert len(graph) > 20 and "mmvae.model" in graph["mmvae"]  # the walk sees the package
    found = cycles(graph)
    assert not found, "import cycles: " + "; ".join(" <-> ".join(c) for c in found)


#: DESIGN.md's layers, bottom first: a module may import from its own layer (the cycle test keeps that acyclic) and
#: the layers below, never from one above. A module belongs to the layer of its first name after "mmvae".
LAYERS = [
    {"errors", "version", "atomic", "devices", "registry", "gaussian", "recorded", "networks", "sequences",
     "validation", "datasets"},
    {"likelihoods", "modality", "aggregators", "fusion", "priors", "checkpoint", "distributed"},
    {"objectives", "progress", "runfolder"},
    {"model", "trainer"},
    {"models", "loading"},
    {"evaluation", "impute_file", "study"},
    {"cli"},
    {"", "__main__"},  # the package root: re-exports only, and `python -m mmvae`
]


def layer(module: str) -> int:
    """The index in LAYERS of a dotted module name; KeyError for a module DESIGN.md does not place yet."""
    head = module.split(".")[1] if "." in module else ""
    for i, names in enumerate(LAYERS):
        if head in names:
            return i
    raise KeyError(f"{module} is in no layer: add it to LAYERS here and to DESIGN.md")


def test_dependencies_point_down_the_layers():
    graph = import_graph()
    upward = [f"{a} (layer {layer(a)}) imports {b} (layer {layer(b)})"
              for a, targets in graph.items() for b in targets if layer(b) > layer(a)]
    assert not upward, "imports against the layers: " + "; ".join(sorted(upward))
    assert layer("mmvae.trainer") > layer("mmvae.checkpoint") and layer("mmvae.cli.options") == len(LAYERS) - 2


@pytest.mark.parametrize("source, expect", [
    ("from . import b\n", True),                       # module-level, relative, a submodule
    ("def f():\n    from .b import thing\n", True),    # function-level import counts too
    ("import mmvae.pkg.b as b\n", True),               # absolute
    ("from .c import b\n", False),                     # another module
])
def test_the_cycle_check_can_fail(tmp_path, source, expect):
    """The checker finds a cycle through each import form (pkg.a <-> pkg.b), and none where there is none."""
    global ROOT
    pkg = tmp_path / "mmvae" / "pkg"
    pkg.mkdir(parents=True)
    for f in (tmp_path / "mmvae" / "__init__.py", pkg / "__init__.py", pkg / "c.py"):
        f.write_text("")
    (pkg / "a.py").write_text(source)
    (pkg / "b.py").write_text("from . import a\n")
    saved, ROOT = ROOT, tmp_path / "mmvae"
    try:
        found = cycles(import_graph())
    finally:
        ROOT = saved
    assert (["mmvae.pkg.a", "mmvae.pkg.b"] in found) is expect


def test_modules_stay_readable():
    """Small pieces: no function over 60 lines, no class over about 200 (docstrings included)."""
    long = []
    for name, path in modules().items():
        for node in ast.walk(ast.parse(path.read_text())):
            size = getattr(node, "end_lineno", 0) - getattr(node, "lineno", 0) + 1
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and size > 60:
                long.append(f"{name}.{node.name}: {size} lines (function)")
            elif isinstance(node, ast.ClassDef) and size > 220:
                long.append(f"{name}.{node.name}: {size} lines (class)")
    assert not long, "; ".join(long)
