"""The import graph of ``holepunch/``: no cycle, no private name across modules, no lab.

Every module of the package is parsed with :mod:`ast` (nothing is imported):

- the graph of imports has no cycle: every import counts, those inside functions and
  under ``if TYPE_CHECKING:`` too (a cycle hidden from the interpreter is still two
  modules that each need the other);
- no module imports an underscored name from another holepunch module
  (``from holepunch.x import _y``), reads one off an imported module (``x._y``), uses
  one that another module defines on an object (``obj._y``), or imports a private
  module (``holepunch.x._y``) from outside the package that holds it;
- nothing in ``holepunch/`` imports ``lab`` (the NAT lab, not installed) or ``tests``.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from twisted.python.filepath import FilePath
from twisted.trial.unittest import SynchronousTestCase

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = "holepunch"
FORBIDDEN_TOP_LEVEL = ("lab", "tests")


def _private(name: str) -> bool:
    """``_y`` is private; ``__y__`` (``__version__``, ``__all__``) is not."""
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


@dataclass
class Module:
    """One parsed module of the package."""

    name: str
    path: Path
    is_package: bool
    tree: ast.Module

    @property
    def package(self) -> str:
        """The package relative imports start from."""
        return self.name if self.is_package else self.name.rpartition(".")[0]


@dataclass
class ImportSite:
    """One ``import`` or ``from ... import`` statement, resolved."""

    module: str
    """The absolute name of the module imported from (or imported)."""
    names: tuple[str, ...]
    """The names of a ``from`` import; empty for ``import x.y``."""
    bindings: dict[str, str]
    """Local name -> the dotted name it is bound to."""
    line: int


@dataclass
class Package:
    """Every module of a package, parsed, and what each imports."""

    root: Path
    name: str
    modules: dict[str, Module] = field(default_factory=dict)

    @classmethod
    def load(cls, root: Path, name: str) -> Package:
        """Parse every ``.py`` file under ``root / name``."""
        package = cls(root, name)
        for path in sorted((root / name).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            is_package = parts[-1] == "__init__"
            if is_package:
                parts.pop()
            dotted = ".".join(parts)
            tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
            package.modules[dotted] = Module(dotted, path, is_package, tree)
        return package

    def where(self, module: Module, line: int) -> str:
        return f"{module.path.relative_to(self.root)}:{line}"

    def imports(self, module: Module) -> Iterator[ImportSite]:
        """Every import statement of ``module``, anywhere in it."""
        yield from _ImportVisitor(module).sites

    def target(self, site: ImportSite, name: str | None) -> str | None:
        """The package module an import runs: ``x.name`` if that is a module, else ``x``."""
        if name is not None and f"{site.module}.{name}" in self.modules:
            return f"{site.module}.{name}"
        if site.module in self.modules:
            return site.module
        return None

    def graph(self) -> dict[str, set[str]]:
        """Module -> the package modules it imports (anywhere in it)."""
        edges: dict[str, set[str]] = {name: set() for name in self.modules}
        for module in self.modules.values():
            for site in self.imports(module):
                for name in site.names or (None,):
                    target = self.target(site, name)
                    if target is not None:
                        edges[module.name].add(target)
        return edges

    def cycles(self) -> list[list[str]]:
        """One cycle (first module repeated at the end) per strongly connected component."""
        edges = self.graph()
        return [_cycle_in(component, edges) for component in _components(edges)]

    def private_imports(self) -> list[str]:
        """``from holepunch.x import _y`` (and private modules used outside their package)."""
        found = []
        for module in self.modules.values():
            for site in self.imports(module):
                if not _in_package(site.module, self.name):
                    continue
                where = self.where(module, site.line)
                owner = site.module.rpartition(".")[0]
                hidden = [part for part in site.module.split(".") if _private(part)]
                if hidden and not _inside(module.package, owner):
                    found.append(f"{where}: {module.name} imports private module {site.module}")
                for name in site.names:
                    if not _private(name):
                        continue
                    submodule = f"{site.module}.{name}"
                    if submodule in self.modules and _inside(module.package, site.module):
                        continue  # a package's own private submodule
                    if site.module == module.name:
                        continue
                    found.append(f"{where}: {module.name} imports {name} from {site.module}")
        return found

    def private_attributes(self) -> list[str]:
        """``x._y`` where ``x`` is a holepunch module imported into another module."""
        found = []
        for module in self.modules.values():
            bound: dict[str, str] = {}
            for site in self.imports(module):
                for local, dotted in site.bindings.items():
                    if _in_package(dotted, self.name):
                        bound[local] = dotted
            for node in ast.walk(module.tree):
                if not (isinstance(node, ast.Attribute) and _private(node.attr)):
                    continue
                owner = _dotted(node.value, bound)
                if owner in self.modules and owner != module.name:
                    where = self.where(module, node.lineno)
                    found.append(f"{where}: {module.name} reads {owner}.{node.attr}")
        return found

    def private_members(self) -> list[str]:
        """``obj._y`` (``obj`` not ``self`` or ``cls``) where ``_y`` is defined in another
        package module and nowhere in this one: reaching into another module's object.

        Names defined only outside the package (a library's internals that a module
        wrapping that library must touch) are not this rule's business.
        """
        defined = {name: _defined_names(module.tree) for name, module in self.modules.items()}
        found = []
        for module in self.modules.values():
            own = defined[module.name]
            for node in ast.walk(module.tree):
                if not (isinstance(node, ast.Attribute) and _private(node.attr)):
                    continue
                if isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"):
                    continue
                if node.attr in own:
                    continue
                owners = sorted(name for name, names in defined.items() if node.attr in names)
                if owners:
                    where = self.where(module, node.lineno)
                    found.append(
                        f"{where}: {module.name} uses {ast.unparse(node)} "
                        f"(defined in {', '.join(owners)})"
                    )
        return found

    def forbidden_imports(self, forbidden: tuple[str, ...]) -> list[str]:
        """Imports of ``forbidden`` top-level packages (lab, tests), anywhere in a module."""
        found = []
        for module in self.modules.values():
            for site in self.imports(module):
                if site.module.split(".")[0] in forbidden:
                    where = self.where(module, site.line)
                    found.append(f"{where}: {module.name} imports {site.module}")
        return found


class _ImportVisitor(ast.NodeVisitor):
    """Collects the import statements of one module, wherever they are."""

    def __init__(self, module: Module) -> None:
        self.module = module
        self.sites: list[ImportSite] = []
        self.visit(module.tree)

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            if alias.asname:
                bindings = {alias.asname: alias.name}
            else:
                first = alias.name.split(".")[0]
                bindings = {first: first}
            self.sites.append(ImportSite(alias.name, (), bindings, node.lineno))

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        base = node.module or ""
        if node.level:
            anchor = self.module.package.split(".")
            anchor = anchor[: len(anchor) - (node.level - 1)]
            base = ".".join([*anchor, base] if base else anchor)
        names = tuple(alias.name for alias in node.names if alias.name != "*")
        bindings = {
            alias.asname or alias.name: f"{base}.{alias.name}"
            for alias in node.names
            if alias.name != "*"
        }
        self.sites.append(ImportSite(base, names, bindings, node.lineno))


def _defined_names(tree: ast.Module) -> set[str]:
    """Every name a module defines: functions, classes, assigned names and attributes."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
            names.add(node.attr)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
    return names


def _in_package(dotted: str, package: str) -> bool:
    return dotted == package or dotted.startswith(package + ".")


def _inside(package: str, owner: str) -> bool:
    """Whether code in ``package`` is inside ``owner`` (the same package or below it)."""
    return _in_package(package, owner)


def _dotted(node: ast.expr, bound: dict[str, str]) -> str | None:
    """The dotted name an expression like ``x.y`` stands for, if ``x`` is an import."""
    if isinstance(node, ast.Name):
        return bound.get(node.id)
    if isinstance(node, ast.Attribute):
        base = _dotted(node.value, bound)
        return None if base is None else f"{base}.{node.attr}"
    return None


def _components(edges: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components that hold a cycle, each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(edges[node]):
            if target not in index:
                connect(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1 or node in edges[node]:
                found.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            connect(node)
    return sorted(found)


def _cycle_in(component: list[str], edges: dict[str, set[str]]) -> list[str]:
    """A shortest cycle through the component's first module, by breadth-first search."""
    start = component[0]
    members = set(component)
    previous: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for target in sorted(edges[node] & members):
                if target == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(previous[path[-1]])
                    return [*reversed(path), start]
                if target not in previous:
                    previous[target] = node
                    following.append(target)
        frontier = following
    raise AssertionError(f"no cycle in {component}")


def _report(title: str, lines: list[str]) -> str:
    return "\n".join([f"{title} ({len(lines)}):", *(f"  {line}" for line in lines)])


class HolepunchImportGraphTests(SynchronousTestCase):
    """The rules, on the real ``holepunch/``."""

    def setUp(self) -> None:
        self.package = Package.load(ROOT, PACKAGE)

    def test_parsed_every_module(self) -> None:
        """The whole package is read, including the ICE core and the test doubles."""
        for name in ("holepunch", "holepunch.ice.core", "holepunch.testing.fakenet"):
            self.assertIn(name, self.package.modules)

    def test_no_import_cycle(self) -> None:
        """No cycle among imports, TYPE_CHECKING and function-level ones included."""
        cycles = [" -> ".join(cycle) for cycle in self.package.cycles()]
        if cycles:
            self.fail(_report("import cycles", cycles))

    def test_no_private_name_imported(self) -> None:
        """No ``from holepunch.x import _y`` across modules."""
        found = self.package.private_imports()
        if found:
            self.fail(_report("private names imported", found))

    def test_no_private_attribute_of_a_module(self) -> None:
        """No ``x._y`` where ``x`` is another holepunch module."""
        found = self.package.private_attributes()
        if found:
            self.fail(_report("private attributes of modules", found))

    def test_no_private_member_of_another_module(self) -> None:
        """No ``obj._y`` where ``_y`` belongs to another holepunch module's objects."""
        found = self.package.private_members()
        if found:
            self.fail(_report("private members used across modules", found))

    def test_no_lab_or_tests_import(self) -> None:
        """The library does not import the NAT lab or the tests."""
        found = self.package.forbidden_imports(FORBIDDEN_TOP_LEVEL)
        if found:
            self.fail(_report("imports of lab or tests", found))


class CheckerTests(SynchronousTestCase):
    """The checker finds what it should on a small made-up package."""

    def make(self, files: dict[str, str]) -> Package:
        root = FilePath(self.mktemp())
        for relative, source in files.items():
            path = root.preauthChild(relative)
            path.parent().makedirs(ignoreExistingDirectory=True)
            path.setContent(source.encode())
        return Package.load(Path(root.path), "pkg")

    def test_cycle_named(self) -> None:
        """A three-module cycle is reported in import order; so is one made by an import
        in a function and one under TYPE_CHECKING."""
        package = self.make(
            {
                "pkg/__init__.py": "",
                "pkg/a.py": "from pkg import b\n",
                "pkg/b.py": "import pkg.c\n",
                "pkg/c.py": "from pkg.a import thing\n",
                "pkg/d.py": "def f():\n    from pkg import e\n",
                "pkg/e.py": (
                    "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg import d\n"
                ),
            }
        )
        self.assertEqual(
            package.cycles(),
            [["pkg.a", "pkg.b", "pkg.c", "pkg.a"], ["pkg.d", "pkg.e", "pkg.d"]],
        )

    def test_relative_imports_resolved(self) -> None:
        """``from . import x`` and ``from ..y import z`` resolve against the package."""
        package = self.make(
            {
                "pkg/__init__.py": "",
                "pkg/sub/__init__.py": "from . import m\n",
                "pkg/sub/m.py": "from ..top import _hidden\nfrom . import n\n",
                "pkg/sub/n.py": "from .. import sub\n",
                "pkg/top.py": "",
            }
        )
        self.assertEqual(package.cycles(), [["pkg.sub", "pkg.sub.m", "pkg.sub.n", "pkg.sub"]])
        self.assertEqual(
            package.private_imports(),
            ["pkg/sub/m.py:1: pkg.sub.m imports _hidden from pkg.top"],
        )

    def test_private_names(self) -> None:
        """Private names, attributes and modules across modules; dunders and a package's
        own private submodules are fine."""
        package = self.make(
            {
                "pkg/__init__.py": "__version__ = '1'\n",
                "pkg/a.py": (
                    "from pkg import __version__\n"
                    "from pkg.sub._impl import run\n"
                    "import pkg.b as b\n"
                    "def f():\n    from pkg.b import _secret\n    return b._secret\n"
                ),
                "pkg/b.py": "_secret = 1\n",
                "pkg/sub/__init__.py": "import pkg.b\nX = pkg.b._secret\nfrom . import _impl\n",
                "pkg/sub/_impl.py": "def run(): pass\n",
                "pkg/sub/c.py": "from pkg.sub._impl import run\n",
            }
        )
        self.assertEqual(
            package.private_imports(),
            [
                "pkg/a.py:2: pkg.a imports private module pkg.sub._impl",
                "pkg/a.py:5: pkg.a imports _secret from pkg.b",
            ],
        )
        self.assertEqual(
            package.private_attributes(),
            [
                "pkg/a.py:6: pkg.a reads pkg.b._secret",
                "pkg/sub/__init__.py:2: pkg.sub reads pkg.b._secret",
            ],
        )

    def test_private_members(self) -> None:
        """Another module's object's underscored member is found; one's own objects'
        (``other._x`` in ``__eq__``) and a library's internals are not."""
        package = self.make(
            {
                "pkg/__init__.py": "",
                "pkg/a.py": (
                    "class A:\n"
                    "    def __init__(self):\n        self._x = 1\n"
                    "    def _hook(self):\n        pass\n"
                    "    def __eq__(self, other):\n        return self._x == other._x\n"
                ),
                "pkg/b.py": ("def f(a, sock):\n    a._hook()\n    return sock._library_internal\n"),
            }
        )
        self.assertEqual(
            package.private_members(),
            ["pkg/b.py:2: pkg.b uses a._hook (defined in pkg.a)"],
        )

    def test_forbidden_imports(self) -> None:
        """``lab`` and ``tests`` are found wherever they are imported."""
        package = self.make(
            {
                "pkg/__init__.py": "",
                "pkg/a.py": "def f():\n    from lab.natlab import NatLab\n",
                "pkg/b.py": "import tests.helpers\nimport labrador\n",
            }
        )
        self.assertEqual(
            package.forbidden_imports(("lab", "tests")),
            ["pkg/a.py:2: pkg.a imports lab.natlab", "pkg/b.py:1: pkg.b imports tests.helpers"],
        )
