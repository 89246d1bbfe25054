"""The shape of `server/`, read from its source with `ast` (nothing is imported):

- no import circle among server modules, not even one under `TYPE_CHECKING` or inside a
  function (a circle is two concepts that cannot be read apart);
- no module over 500 lines (past that it is two concepts, STYLE.md);
- everything but the doors (http/, cli/, console/, batch/) — the DataPlane, models, scheduler,
  reconciler, repository, engines, auth, jobs, the counters and their views — never imports a
  transport: not starlette, not uvicorn, not server.http, not even through another module.
"""

from __future__ import annotations

import ast
from pathlib import Path

SERVER = Path(__file__).resolve().parent.parent / "server"
MAX_LINES = 500
#: The doors: the only modules that may import a transport (docs/architecture.md).
DOORS = ("http", "grpc", "cli", "console", "batch", "__main__")
TRANSPORTS = ("starlette", "uvicorn", "grpc", "server.http", "server.grpc")


def module_name(path: Path) -> str:
    parts = path.relative_to(SERVER.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(SERVER.rglob("*.py"))}


def is_package(name: str) -> bool:
    return MODULES[name].name == "__init__.py"


def imports(name: str) -> set[str]:
    """The modules server module `name` imports anywhere in its source."""
    package = name if is_package(name) else name.rpartition(".")[0]
    return imported(ast.parse(MODULES[name].read_text(), str(MODULES[name])), package)


def imported(tree: ast.AST, package: str) -> set[str]:
    """Every import in `tree` (under `if TYPE_CHECKING:` and in functions too), as absolute
    dotted names; `from .x import y` is `<package>.x.y` when `y` is a module, else
    `<package>.x`."""
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            submodules = {f"{target}.{alias.name}" for alias in node.names} & MODULES.keys()
            found |= submodules
            if len(submodules) < len(node.names):  # names defined in `target` itself
                found.add(target)
    return found


def graph() -> dict[str, set[str]]:
    """server module -> the server modules it imports.

    Importing `server.a.b` also runs the packages above it, so they count, except the ones
    that hold the importing module (Python has them imported already); a package the module
    names itself (`from . import x`, `from .. import y`) counts.
    """
    edges = {}
    for name in MODULES:
        explicit = {t for t in imports(name) if t in MODULES}
        implied = set()
        for target in explicit:
            parts = target.split(".")
            implied.update(".".join(parts[:i]) for i in range(1, len(parts)))
        implied = {p for p in implied if not name.startswith(f"{p}.")}
        edges[name] = (explicit | implied) & MODULES.keys() - {name}
    return edges


def circles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
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


def reachable(edges: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        node = todo.pop()
        for nxt in edges[node]:
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def test_the_checker_sees_a_circle_and_typing_only_imports() -> None:
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    hidden = ast.parse(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from .models import ModelVersion\n"
        "def later() -> None:\n    from . import reconciler\n"
    )
    assert {"server.models", "server.reconciler"} <= imported(hidden, "server")
    assert "server.scheduler" in imports("server.models")
    edges = graph()
    assert "server.engines" in edges["server.models"]  # from .engines import ...
    assert "server" in edges["server.dataplane"]  # from . import __version__
    assert "server.http" not in edges["server.http.app"]  # from . import admin: a module
    assert "server.http.admin" in edges["server.http.app"]
    assert "server.engines" in edges["server.engines.onnxruntime"]  # from . import LoadOptions
    assert {"server.counters", "server.errors"} <= edges["server.scheduler"]


def test_no_import_circle_among_server_modules() -> None:
    assert circles(graph()) == []


def test_no_server_module_is_over_500_lines() -> None:
    long = {
        name: n
        for name, path in MODULES.items()
        if not name.startswith("server.grpc.generated")  # protoc's output (server/grpc/protos/)
        and (n := len(path.read_text().splitlines())) > MAX_LINES
    }
    assert long == {}


def test_the_core_never_imports_a_transport() -> None:
    edges = graph()
    core = [n for n in MODULES if n.removeprefix("server.").split(".")[0] not in DOORS]
    named = {"dataplane", "models", "scheduler", "reconciler", "repository", "engines.onnxruntime",
             "auth.guard", "counters", "statistics", "prometheus", "jobs.api",
             "jobs.runner", "jobs.webhook"}  # fmt: skip
    assert {f"server.{n}" for n in named} <= set(core)
    offenders = {}
    for name in core:
        modules = {name} | reachable(edges, name)
        bad = {
            (module, t)
            for module in modules
            for t in imports(module)
            if any(t == x or t.startswith(f"{x}.") for x in TRANSPORTS)
        }
        if bad:
            offenders[name] = sorted(bad)
    assert offenders == {}
