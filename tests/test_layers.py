"""probgen's layers point one way (read from the source with ``ast``, nothing imported).

The order, lowest first::

    errors, registry, checks, files -> data -> nn -> flows -> infer -> models -> train
        -> metrics -> inspect -> viz -> cli -> lightning

A module imports only from its own subpackage and the layers before it; the modules'
import graph has no circle (counting that importing ``probgen.a.b`` runs
``probgen/a/__init__.py`` first); and no ``probgen`` import sits inside a function, where
it would hide a circle or an upward arrow. Imports inside functions are fine for optional
third-party libraries (zuko, lightning, mlflow, wandb, ...): those are not checked here.
"""

from __future__ import annotations

import ast
import collections
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "probgen"

LAYERS = [
    ("errors", "registry", "checks", "files"),
    ("data",),
    ("nn",),
    ("flows",),
    ("infer",),
    ("models",),
    ("train",),
    ("metrics",),
    ("inspect",),
    ("viz",),
    ("cli",),
    ("lightning",),
]
RANK = {room: i for i, rooms in enumerate(LAYERS) for room in rooms}

# probgen imports inside functions that are known, each with what should become of it.
# Empty is the goal; an entry that no longer occurs fails too.
KNOWN_FUNCTION_LEVEL: dict = {}


def _modules() -> dict:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = ["probgen", *path.relative_to(PACKAGE).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def _room(module: str):
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def _rank(module: str) -> int:
    """A module's layer; ``probgen`` itself (its ``__init__``) sits on the highest layer
    it imports."""
    room = _room(module)
    if room is not None:
        return RANK[room]
    return max(_rank(t) for t, _, _ in IMPORTS["probgen"] if t != "probgen")


def _ancestors(module: str) -> list:
    parts = module.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def _imports(module: str, path: Path):
    """``(target module, line, inside a function)`` for each probgen import of ``module``."""
    tree = ast.parse(path.read_text())
    parent = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}

    def in_function(node) -> bool:
        while node in parent:
            node = parent[node]
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                return True
        return False

    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    seen = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                root = package
                for _ in range(node.level - 1):
                    root = root.rsplit(".", 1)[0]
                base = f"{root}.{base}" if base else root
            # "from probgen.train import loop" imports the submodule probgen.train.loop
            names = [
                f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names
            ]
        else:
            continue
        for name in names:
            if name == "probgen" or name.startswith("probgen."):
                target = name
                while target not in MODULES:  # probgen.x.y.Name -> probgen.x.y
                    target = target.rsplit(".", 1)[0]
                if (target, node.lineno) not in seen:
                    seen.add((target, node.lineno))
                    yield target, node.lineno, in_function(node)


IMPORTS = {m: list(_imports(m, p)) for m, p in MODULES.items()}


def _graph() -> dict:
    """Who imports whom: importing a module also runs its packages' ``__init__``; an import
    inside a function counts as well (it runs too, only later), unless it is a known one."""
    graph = collections.defaultdict(set)
    for module, found in IMPORTS.items():
        path = str(MODULES[module].relative_to(PACKAGE.parent))
        for target, _, inside in found:
            if inside and (path, target) in KNOWN_FUNCTION_LEVEL:
                continue
            for t in [target, *_ancestors(target)]:
                if t != module and t not in _ancestors(module):
                    graph[module].add(t)
    return graph


def _circles(graph) -> list:
    """The strongly connected groups of more than one module (Tarjan), each with one
    circle through it."""
    index, low, stack, on, groups = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for v in sorted(MODULES):
        if v not in index:
            visit(v)
    out = []
    for group in groups:
        members, start = set(group), group[0]
        previous, queue, last = {start: None}, [start], None
        while queue and last is None:
            u = queue.pop(0)
            for w in sorted(graph.get(u, ())):
                if w == start:
                    last = u
                    break
                if w in members and w not in previous:
                    previous[w] = u
                    queue.append(w)
        path = [last]
        while previous[path[-1]] is not None:
            path.append(previous[path[-1]])
        out.append(f"{len(group)} modules, e.g. " + " -> ".join([*reversed(path), start]))
    return out


def test_every_module_has_a_layer():
    unplaced = sorted({_room(m) for m in MODULES} - set(RANK) - {None})
    assert not unplaced, f"subpackages or modules with no layer in LAYERS: {unplaced}"


def test_no_import_circle():
    circles = _circles(_graph())
    assert not circles, (
        "import circles (strongly connected groups of modules, one circle "
        "through each):\n" + "\n".join(circles)
    )


def test_no_upward_arrow():
    upward = [
        f"{module} ({_room(module)}) imports {target} ({_room(target) or 'probgen'}), line {line}"
        for module, found in IMPORTS.items()
        for target, line, _ in found
        if _rank(target) > _rank(module)
    ]
    assert not upward, "imports against the layers' order:\n" + "\n".join(upward)


def test_no_probgen_import_inside_a_function():
    found = {
        (str(MODULES[m].relative_to(PACKAGE.parent)), target): line
        for m, imports in IMPORTS.items()
        for target, line, inside in imports
        if inside
    }
    new = sorted(
        f"{path}:{line} imports {target}"
        for (path, target), line in found.items()
        if (path, target) not in KNOWN_FUNCTION_LEVEL
    )
    gone = sorted(
        f"{path} no longer imports {target} in a function: drop it from KNOWN_FUNCTION_LEVEL"
        for path, target in KNOWN_FUNCTION_LEVEL
        if (path, target) not in found
    )
    assert not new + gone, (
        "probgen imports inside functions (put the code in the right "
        "layer and import at the top):\n" + "\n".join(new + gone)
    )
