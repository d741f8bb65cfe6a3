"""The import graph of scepter_core, read from the source with `ast` (nothing is imported):
arrows point down only, so the graph has no cycle, and the core never imports the CLI.

How imports count:
- Every `import` / `from ... import` statement is an arrow, wherever it stands: at module
  level, under `if`/`try`, and inside functions. A lazy import defers cost (torch.distributed,
  peft, Lightning) or keeps `import scepter_core` cheap; it is not a way to hide an upward
  arrow, so function-level imports must keep the graph acyclic too.
- `from pkg import name` points at `pkg.name` when that is a module, else at `pkg`.
- Importing `a.b.c` runs `a/__init__` and `a/b/__init__` first, so it is also an arrow to
  those packages (except the importer's own packages, which are already running).
- Loading by a string (`importlib.import_module(...)`, the registry's built-in packages)
  is plugin loading, not an arrow, and is not counted.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CORE = ROOT / 'scepter_core'
# Front-end libraries the core must not import (it takes a logger; progress has one helper).
FORBIDDEN = ('scepter_cli', 'typer', 'rich.console')
# ... except the one small reporting helper that progress goes through (DESIGN.md).
REPORTING_HELPER = 'scepter_core.utils.progress'

# Cycles that exist for a reason outside this branch, each with what removes it. Keep empty.
# diffusion.sampling imports models.fast_layers (a CPU fast path); issue 17 moves the fast
# paths into scepter_core/accel/, after which this entry must go (the test says so).
KNOWN_CYCLES: list[set[str]] = []


def _modules() -> dict[str, tuple[Path, bool]]:
    out = {}
    for path in CORE.rglob('*.py'):
        parts = list(path.relative_to(ROOT).with_suffix('').parts)
        is_pkg = parts[-1] == '__init__'
        out['.'.join(parts[:-1] if is_pkg else parts)] = (path, is_pkg)
    return out


MODULES = _modules()


def _targets(module: str, is_pkg: bool, node: ast.Import | ast.ImportFrom) -> list[str]:
    """Absolute module names one import statement reaches."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    if node.level:
        base = module.split('.') if is_pkg else module.split('.')[:-1]
        base = base[:len(base) - (node.level - 1)]
        target = '.'.join(base + ([node.module] if node.module else []))
    else:
        target = node.module or ''
    return [f'{target}.{a.name}' if f'{target}.{a.name}' in MODULES else target for a in node.names]


def _with_packages(module: str, target: str) -> list[str]:
    parts = target.split('.')
    ancestors = ['.'.join(parts[:i]) for i in range(1, len(parts))]
    return [target] + [a for a in ancestors if not (module == a or module.startswith(a + '.'))]


def imports_of(module: str) -> dict[str, int]:
    """Every module `module` imports (any library), with the line of the first import."""
    path, is_pkg = MODULES[module]
    found: dict[str, int] = {}
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            for target in _targets(module, is_pkg, node):
                for name in _with_packages(module, target):
                    found.setdefault(name, node.lineno)
    return found


def core_graph() -> dict[str, set[str]]:
    return {m: {t for t in imports_of(m) if t in MODULES and t != m} for m in MODULES}


def cycles(graph: dict[str, set[str]]) -> list[tuple[set[str], list[str]]]:
    """Strongly connected components of more than one module (Tarjan, iterative), each
    with one cycle through it to print."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            v, children = work[-1]
            w = next(children, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(graph[w]))))
                elif w in on_stack:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = set()
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    comp.add(w)
                    if w == v:
                        break
                if len(comp) > 1:
                    components.append(comp)
    return [(comp, _one_cycle(graph, comp)) for comp in components]


def _one_cycle(graph: dict[str, set[str]], comp: set[str]) -> list[str]:
    """A shortest cycle through the component's first module (breadth-first), to print."""
    start = min(comp)
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(graph[v] & comp):
                if w == start:
                    return paths[v] + [start]
                if w not in paths:
                    paths[w] = paths[v] + [w]
                    nxt.append(w)
        frontier = nxt
    return sorted(comp)


def test_the_walk_sees_lazy_and_package_imports():
    # function-level: the spawn launcher imports the data loader inside a function
    assert 'scepter_core.data.loader' in imports_of('scepter_core.launch')
    # importing a submodule reaches its package's __init__ too
    assert 'scepter_core.data' in imports_of('scepter_core.launch')
    graph = {'a': {'b'}, 'b': {'c'}, 'c': {'a'}, 'd': {'a'}}
    assert cycles(graph) == [({'a', 'b', 'c'}, ['a', 'b', 'c', 'a'])]
    assert cycles({'a': {'b'}, 'b': set()}) == []


def test_no_import_cycle_among_core_modules():
    found = cycles(core_graph())
    unexplained = [path for comp, path in found if comp not in KNOWN_CYCLES]
    assert not unexplained, 'import cycles (each arrow an import):\n' + '\n'.join(' -> '.join(c) for c in unexplained)
    gone = [k for k in KNOWN_CYCLES if not any(comp == k for comp, _ in found)]
    assert not gone, f'KNOWN_CYCLES lists a cycle that no longer exists; remove it: {gone}'


@pytest.mark.parametrize('module', sorted(set(MODULES) - {REPORTING_HELPER}))
def test_core_does_not_import_the_cli_or_its_libraries(module):
    bad = {name: line for name, line in imports_of(module).items()
           if any(name == f or name.startswith(f + '.') for f in FORBIDDEN)}
    assert not bad, f'{MODULES[module][0].relative_to(ROOT)} imports ' + \
        ', '.join(f'{name} (line {line})' for name, line in bad.items())
