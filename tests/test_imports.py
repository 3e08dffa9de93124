"""Import rules of the project, read from the source with `ast` (nothing is imported).

Imports run one way: launch/ -> actors/, learners/ -> rl/. actors/ and learners/ do not import each other
(what both need lives in rl/), rl/ never imports ray, deepspeed or vllm, and no project modules import
each other in a cycle.

Every import statement counts, at module level or inside a function. For the cycle check an import under
`if TYPE_CHECKING:` does not (it never runs); for the folder rules it does (it is still a dependency).
`from pkg import name` is an import of the submodule pkg.name when there is one, else of pkg itself.
"""
from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("rl", "actors", "learners", "launch")
LAYER = {"rl": 0, "actors": 1, "learners": 1, "launch": 2}   # a package imports only lower layers (or its own)
NOT_IN_RL = ("ray", "deepspeed", "vllm")


@dataclass(frozen=True)
class Import:
    source: str      # importing module
    target: str      # imported module: a project module, or the top-level name of an outside one
    line: int
    type_only: bool  # under `if TYPE_CHECKING:`
    project: bool    # target is a project module


def project_modules(root: Path = ROOT, packages: tuple[str, ...] = PACKAGES) -> dict[str, Path]:
    """Dotted module name -> file, for every .py file under the packages (a package is its __init__.py)."""
    out = {}
    for pkg in packages:
        for path in sorted((root / pkg).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = path
    return out


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    """ids of the nodes inside `if TYPE_CHECKING:` (or `if typing.TYPE_CHECKING:`) bodies."""
    inside = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for stmt in node.body:
                inside.update(id(n) for n in ast.walk(stmt))
    return inside


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The project module that importing `name` loads: name itself or its longest project prefix."""
    while name:
        if name in modules:
            return name
        name = name.rpartition(".")[0]
    return None


def imports_of(module: str, path: Path, modules: dict[str, Path]) -> list[Import]:
    """Every import statement of one module, anywhere in it, as Imports (self-imports dropped, once per line)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    type_only = _type_checking_nodes(tree)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from . import x, from ..a import b
                parts = package.split(".")
                parts = parts[:len(parts) - (node.level - 1)]
                base = ".".join(parts + ([base] if base else []))
            names = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
        else:
            continue
        for name in names:
            target = _resolve(name, modules)
            if target == module:
                continue
            out.append(Import(module, target or name.split(".")[0], node.lineno, id(node) in type_only,
                              target is not None))
    return list(dict.fromkeys(out))  # `from a import x, y` is one import of a


def all_imports(root: Path = ROOT, packages: tuple[str, ...] = PACKAGES) -> list[Import]:
    modules = project_modules(root, packages)
    return [imp for name, path in modules.items() for imp in imports_of(name, path, modules)]


def find_cycles(imports: list[Import]) -> list[list[str]]:
    """The cycles among runtime imports of project modules, each as a path [a, b, ..., a]: one for every
    import that a depth-first walk finds pointing back into its current chain. Empty when there is none."""
    graph: dict[str, set[str]] = {}
    for imp in imports:
        graph.setdefault(imp.source, set())
        if imp.project and not imp.type_only:
            graph[imp.source].add(imp.target)
    cycles, state = [], {}   # state: 1 = on the current chain, 2 = walked
    for start in sorted(graph):
        if start in state:
            continue
        path, stack, state[start] = [start], [iter(sorted(graph[start]))], 1
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                stack.pop()
            elif state.get(nxt) == 1:
                cycles.append(path[path.index(nxt):] + [nxt])
            elif nxt not in state:
                state[nxt] = 1
                path.append(nxt)
                stack.append(iter(sorted(graph.get(nxt, ()))))
    return cycles


def _where(imp: Import) -> str:
    kind = " (under TYPE_CHECKING)" if imp.type_only else ""
    return f"{imp.source} line {imp.line} imports {imp.target}{kind}"


# ---- the rules, on this project --------------------------------------------------------------
def test_no_import_cycle():
    cycles = find_cycles(all_imports())
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_actors_and_learners_do_not_import_each_other():
    crossing = [imp for imp in all_imports() if imp.project
                and {imp.source.split(".")[0], imp.target.split(".")[0]} == {"actors", "learners"}]
    assert not crossing, "actors/ and learners/ import each other: " + "; ".join(map(_where, crossing))


def test_imports_run_from_launch_to_actors_and_learners_to_rl():
    upward = [imp for imp in all_imports() if imp.project
              and LAYER[imp.target.split(".")[0]] > LAYER[imp.source.split(".")[0]]]
    assert not upward, "imports against launch -> actors/learners -> rl: " + "; ".join(map(_where, upward))


def test_rl_imports_neither_ray_nor_deepspeed():
    bad = [imp for imp in all_imports() if imp.source.split(".")[0] == "rl" and not imp.project
           and imp.target in NOT_IN_RL]
    assert not bad, "rl/ must stay free of ray, deepspeed and vllm: " + "; ".join(map(_where, bad))


# ---- the walker itself, on a made-up tree ----------------------------------------------------
def _write(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_the_walker_sees_function_level_relative_and_type_only_imports(tmp_path):
    _write(tmp_path, {
        "rl/__init__.py": "",
        "rl/a.py": "from rl.b import f\n",
        "rl/b.py": "def f():\n    from . import c\n",          # function-level, relative
        "rl/c.py": "import rl.a\nimport ray\n",                  # closes rl.a -> rl.b -> rl.c -> rl.a
        "rl/d.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from rl.e import E\n",
        "rl/e.py": "from rl import d\n",                         # d -> e is type-only: no cycle
        "actors/__init__.py": "",
        "actors/x.py": "def g():\n    from learners.y import h\n",
        "learners/__init__.py": "",
        "learners/y.py": "h = 1\n",
    })
    imports = all_imports(tmp_path, ("rl", "actors", "learners"))
    assert find_cycles(imports) == [["rl.a", "rl.b", "rl.c", "rl.a"]]
    assert Import("rl.d", "rl.e", 3, True, True) in imports
    assert Import("rl.c", "ray", 2, False, False) in imports
    assert Import("actors.x", "learners.y", 2, False, True) in imports
