"""Check two rules of tuner's design by reading its source: imports flow one way, and tuner uses only the
public API of the libraries it builds on.

- **No import cycles** among the package's modules, counting every import: at the top, under
  ``TYPE_CHECKING`` and inside functions. (Importing ``tuner.x`` runs ``tuner/__init__.py`` first; that
  implicit step is not an edge, an explicit ``from tuner import ...`` is.)
- **No private state of another library**: no import of a ``_private`` module or name from Ray or Optuna
  (or any other package), no ``obj._name`` on anything but ``self`` or ``cls``, and no ``self._name`` that a
  class reads from a base class it does not own (a library class it subclasses).

Usage: ``python scripts/check_design.py [PACKAGE_DIR]`` (default: ``tuner/`` beside this script). Prints one
line per finding and exits 1 if there is any, 0 otherwise.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path


def private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def modules(package: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every ``.py`` file under the package."""
    found = {}
    for path in sorted(package.rglob("*.py")):
        parts = list(path.relative_to(package.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def imported(node: ast.Import | ast.ImportFrom, module: str, is_package: bool) -> list[tuple[str, list[str]]]:
    """``(module, names)`` that one import statement names, relative imports resolved."""
    if isinstance(node, ast.Import):
        return [(alias.name, []) for alias in node.names]
    base = node.module or ""
    if node.level:
        parts = module.split(".") if is_package else module.split(".")[:-1]
        parts = parts[: len(parts) - (node.level - 1)]
        base = ".".join([*parts, base] if base else parts)
    return [(base, [alias.name for alias in node.names])]


def import_edges(package: Path) -> dict[str, set[str]]:
    """Which of the package's modules each one imports."""
    known = modules(package)
    edges: dict[str, set[str]] = {name: set() for name in known}
    for name, path in known.items():
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if not isinstance(node, (ast.Import, ast.ImportFrom)):
                continue
            for target, names in imported(node, name, path.name == "__init__.py"):
                # `from tuner import report` imports the submodule; `from tuner import x` the package.
                subs = [f"{target}.{n}" for n in names if f"{target}.{n}" in known]
                targets = subs if subs and len(subs) == len(names) else [target, *subs]
                edges[name].update(t for t in targets if t in known and t != name)
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(edges[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def assigned(targets: list[ast.expr | None]) -> list[ast.Attribute]:
    """The attributes among assignment targets, tuples (``self.a, self.b = ...``) unpacked."""
    found = []
    for target in targets:
        if isinstance(target, (ast.Tuple, ast.List)):
            found += assigned(list(target.elts))
        elif isinstance(target, ast.Attribute):
            found.append(target)
    return found


def private_uses(package: Path) -> list[str]:
    """Each place the package reaches into another library's (or object's) private state."""
    known = modules(package)
    own = {name.split(".")[0] for name in known}
    findings = []
    for name, path in known.items():
        tree = ast.parse(path.read_text(), str(path))
        where = path.relative_to(package.parent)
        own_classes = {n.name for n in ast.walk(tree) if isinstance(n, ast.ClassDef)}
        imported_from: dict[str, str] = {}  # a name -> the package it was imported from
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                for target, names in imported(node, name, path.name == "__init__.py"):
                    root = target.split(".")[0]
                    for alias in node.names:
                        imported_from[alias.asname or alias.name.split(".")[0]] = root
                    if root in own:
                        continue
                    bad = [p for p in target.split(".") if private(p)] + [n for n in names if private(n)]
                    if bad:
                        findings.append(f"{where}:{node.lineno}: imports private {', '.join(bad)} from {target}")
            elif isinstance(node, ast.Attribute) and private(node.attr):
                owner = node.value
                if not (isinstance(owner, ast.Name) and owner.id in ("self", "cls")):
                    findings.append(f"{where}:{node.lineno}: reads {ast.unparse(node)}, another object's private state")
        for cls in (n for n in ast.walk(tree) if isinstance(n, ast.ClassDef)):
            bases = [ast.unparse(b) for b in cls.bases]
            foreign = [
                b for b in bases if b.split(".")[0] not in own_classes and imported_from.get(b.split(".")[0]) not in own
            ]
            if not foreign:
                continue
            defined = {n.name for n in cls.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}
            for node in ast.walk(cls):
                targets = node.targets if isinstance(node, ast.Assign) else [getattr(node, "target", None)]
                for target in assigned(targets):
                    if isinstance(target.value, ast.Name) and target.value.id == "self":
                        defined.add(target.attr)
            for node in ast.walk(cls):
                if (
                    isinstance(node, ast.Attribute)
                    and isinstance(node.value, ast.Name)
                    and node.value.id == "self"
                    and private(node.attr)
                    and node.attr not in defined
                ):
                    findings.append(
                        f"{where}:{node.lineno}: {cls.name} reads self.{node.attr}, private state of its base "
                        f"{', '.join(foreign)}"
                    )
    return findings


def main(argv: list[str]) -> int:
    package = Path(argv[1]) if len(argv) > 1 else Path(__file__).resolve().parent.parent / "tuner"
    findings = [f"import cycle: {' <-> '.join(c)}" for c in cycles(import_edges(package))]
    findings += private_uses(package)
    for line in findings:
        print(line)
    print(f"{package.name}: {len(findings)} finding{'s' * (len(findings) != 1)}", file=sys.stderr)
    return 1 if findings else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
