"""The package's layering, read from its real import graph (ast, nothing is
imported): every package in a layer of `tff_research.LAYERS`, no import of a
layer above, no import cycle between modules or between packages, absl's
flags and app only under cli/, and no library function over 80 lines.

Imports inside functions count like any other: an import moved into a
function to dodge a cycle is still the cycle.
"""

from __future__ import annotations

import ast
import collections
import dataclasses
import pathlib

import tff_research

ROOT = pathlib.Path(tff_research.__file__).resolve().parent
PACKAGE = 'tff_research'
MAX_FUNCTION_LINES = 80
ABSL_CLI_ONLY = ('absl.flags', 'absl.app')
CLI_LAYER = 'cli'

# Functions over MAX_FUNCTION_LINES in modules under active rework, each TO
# BE SPLIT there (the algorithm interface and the composition of SCAFFOLD and
# clustered FL from TFF's parts): file (relative to tff_research/) ->
# function -> its lines today. A listed function may not grow; once split
# (or gone) it must leave the list, so the list only gets shorter.
KNOWN_LONG_FUNCTIONS = {
}


@dataclasses.dataclass(frozen=True)
class Import:
  source: str  # the importing module
  target: str  # the imported module (a package's __init__ is the package)
  line: int


def _modules() -> dict[str, pathlib.Path]:
  """Dotted module name -> file, for every module of the package."""
  out = {}
  for path in sorted(ROOT.rglob('*.py')):
    parts = list(path.relative_to(ROOT.parent).with_suffix('').parts)
    if parts[-1] == '__init__':
      parts.pop()
    out['.'.join(parts)] = path
  return out


MODULES = _modules()
TREES = {name: ast.parse(path.read_text(), str(path))
         for name, path in MODULES.items()}


def _known_module(name: str) -> str:
  """The longest prefix of `name` that is a module of the package."""
  while name not in MODULES:
    name = name.rpartition('.')[0]
  return name


def _imported_names(module: str, tree: ast.AST):
  """(dotted names, line) of every import in `module`, absolute: for
  `from m import n`, both `m.n` and `m` (`n` may be a module or a name)."""
  package = (module if MODULES[module].name == '__init__.py'
             else module.rpartition('.')[0])
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      for alias in node.names:
        yield (alias.name,), node.lineno
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ''
      if node.level:
        parts = package.split('.')
        parts = parts[:len(parts) - node.level + 1]
        base = '.'.join(parts + ([base] if base else []))
      for alias in node.names:
        yield (f'{base}.{alias.name}', base), node.lineno


def _imports() -> list[Import]:
  out = set()
  for module, tree in TREES.items():
    for names, line in _imported_names(module, tree):
      name = names[0]
      if name.split('.')[0] != PACKAGE:
        continue
      # `from pkg import module` imports that module; `from m import name`
      # imports m.
      target = name if name in MODULES else _known_module(names[-1])
      if target != module:
        out.add(Import(module, target, line))
  return sorted(out, key=lambda i: (i.source, i.target, i.line))


IMPORTS = _imports()


def _package(module: str) -> str:
  """The top-level package under tff_research a module belongs to."""
  parts = module.split('.')
  return parts[1] if len(parts) > 1 else ''


def _rank() -> dict[str, int]:
  return {package: rank for rank, layer in enumerate(tff_research.LAYERS)
          for package in layer}


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
  """The strongly connected components with more than one node (Tarjan)."""
  index, low, stack, on_stack, out = {}, {}, [], set(), []

  def visit(node):
    index[node] = low[node] = len(index)
    stack.append(node)
    on_stack.add(node)
    for nxt in sorted(edges.get(node, ())):
      if nxt not in index:
        visit(nxt)
        low[node] = min(low[node], low[nxt])
      elif nxt in on_stack:
        low[node] = min(low[node], index[nxt])
    if low[node] == index[node]:
      component = []
      while True:
        member = stack.pop()
        on_stack.discard(member)
        component.append(member)
        if member == node:
          break
      if len(component) > 1:
        out.append(sorted(component))

  for node in sorted(edges):
    if node not in index:
      visit(node)
  return out


def _where(source: str, target: str) -> str:
  lines = [i.line for i in IMPORTS if i.source == source and i.target == target]
  return f'{MODULES[source].relative_to(ROOT.parent)}:{lines[0]}'


def test_the_folders_are_the_layers():
  layered = [p for layer in tff_research.LAYERS for p in layer]
  assert len(layered) == len(set(layered)), 'a package in two layers'
  folders = sorted(p.name for p in ROOT.iterdir()
                   if (p / '__init__.py').exists())
  assert folders == sorted(layered), (
      f'packages {folders} != the layers of tff_research.LAYERS'
      f' {sorted(layered)}')
  outside = sorted(p.name for p in ROOT.glob('*.py') if p.name != '__init__.py')
  assert not outside, (
      f'modules outside every package (a folder is a layer): {outside}')


def test_no_module_imports_a_layer_above_it():
  rank = _rank()
  upward = [
      f'{_where(i.source, i.target)}: {i.source} ({_package(i.source)}) ->'
      f' {i.target} ({_package(i.target)})'
      for i in IMPORTS
      if _package(i.target) in rank and _package(i.source) in rank
      and rank[_package(i.target)] > rank[_package(i.source)]]
  assert not upward, 'imports of a layer above:\n' + '\n'.join(
      dict.fromkeys(upward))


def test_no_import_cycle_between_modules():
  edges = collections.defaultdict(set)
  for i in IMPORTS:
    edges[i.source].add(i.target)
  cycles = _cycles(edges)
  assert not cycles, 'module import cycles:\n' + '\n'.join(
      ' <-> '.join(c) for c in cycles)


def test_no_import_cycle_between_packages():
  edges = collections.defaultdict(set)
  for i in IMPORTS:
    source, target = _package(i.source), _package(i.target)
    if source != target and source and target:
      edges[source].add(target)
  cycles = _cycles(edges)
  details = [
      f'{" <-> ".join(c)}: ' + ', '.join(
          f'{i.source} -> {i.target}' for i in IMPORTS
          if _package(i.source) in c and _package(i.target) in c
          and _package(i.source) != _package(i.target))
      for c in cycles]
  assert not cycles, 'package import cycles:\n' + '\n'.join(details)


def test_absl_flags_and_app_only_under_cli():
  offenders = []
  for module, tree in TREES.items():
    if _package(module) == CLI_LAYER:
      continue
    for names, line in _imported_names(module, tree):
      for name in set(names) & set(ABSL_CLI_ONLY):
        offenders.append(
            f'{MODULES[module].relative_to(ROOT.parent)}:{line} imports {name}')
  assert not offenders, (
      'absl flags/app outside cli/ (the library receives values, never'
      ' flags):\n' + '\n'.join(sorted(set(offenders))))


def _function_lengths():
  """(file relative to tff_research/, qualified name, lines) of every
  function and method, nested ones included."""
  for module, tree in TREES.items():
    path = MODULES[module].relative_to(ROOT).as_posix()

    def walk(node, prefix, path=path):
      for child in ast.iter_child_nodes(node):
        if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
          name = prefix + child.name
          yield path, name, child.end_lineno - child.lineno + 1
          yield from walk(child, name + '.')
        elif isinstance(child, ast.ClassDef):
          yield from walk(child, prefix + child.name + '.')
        else:
          yield from walk(child, prefix)

    yield from walk(tree, '')


def test_no_library_function_is_longer_than_80_lines():
  too_long, stale = [], []
  lengths = {(path, name): lines for path, name, lines in _function_lengths()}
  for (path, name), lines in sorted(lengths.items()):
    allowed = KNOWN_LONG_FUNCTIONS.get(path, {}).get(name, MAX_FUNCTION_LINES)
    if lines > allowed:
      too_long.append(f'{path}:{name} is {lines} lines (at most {allowed})')
  for path, names in KNOWN_LONG_FUNCTIONS.items():
    for name in names:
      if lengths.get((path, name), 0) <= MAX_FUNCTION_LINES:
        stale.append(f'{path}:{name}')
  assert not too_long, 'functions too long (split them):\n' + '\n'.join(
      too_long)
  assert not stale, (
      f'split to at most {MAX_FUNCTION_LINES} lines or gone: remove from'
      f' KNOWN_LONG_FUNCTIONS: {stale}')
