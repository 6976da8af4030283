"""The layering of proxy/, computed from the code: no import cycles (function-local imports
included), only the server and the CLI import the server, no module reaches into another's
private names, and no module or function grows past what one reader holds in mind."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "proxy"
MAX_MODULE_LINES = 600
MAX_FUNCTION_LINES = 80

#: Over the limits for a reason said here (each entry is a debt, not a rule).
LONG_MODULES: dict[str, str] = {}
LONG_FUNCTIONS: dict[str, str] = {}


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = path.relative_to(ROOT.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


MODULES = _modules()


def _resolve(module: str, node: ast.ImportFrom) -> str:
    if node.level == 0:
        return node.module or ""
    base = module.split(".")
    is_package = MODULES[module].name == "__init__.py"
    base = base if is_package else base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join([*base, node.module] if node.module else base)


def _imports(module: str) -> Iterator[tuple[str, list[str], int]]:
    """(imported module, names taken from it, line) for every import, at any depth."""
    tree = ast.parse(MODULES[module].read_text(), str(MODULES[module]))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("proxy"):
                    yield alias.name, [], node.lineno
        elif isinstance(node, ast.ImportFrom):
            target = _resolve(module, node)
            if not target.startswith("proxy"):
                continue
            names = [a.name for a in node.names]
            # `from proxy.server import objects` imports the submodule proxy.server.objects.
            subs = [f"{target}.{n}" for n in names if f"{target}.{n}" in MODULES]
            if subs:
                for sub in subs:
                    yield sub, [], node.lineno
                rest = [n for n in names if f"{target}.{n}" not in MODULES]
                if rest:
                    yield target, rest, node.lineno
            else:
                yield target, names, node.lineno


def _graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {m: set() for m in MODULES}
    for module in MODULES:
        for target, _, _ in _imports(module):
            # Importing a.b.c also runs a/__init__ and a/b/__init__, but those are one-liners
            # here; only the module itself counts as an edge.
            if target in MODULES and target != module:
                graph[module].add(target)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    counter = 0

    def visit(v: str) -> None:
        nonlocal counter
        index[v] = low[v] = counter
        counter += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_cycle_finder_finds_a_cycle() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles() -> None:
    assert _cycles(_graph()) == []


def test_only_the_server_and_the_cli_import_the_server() -> None:
    offenders = [
        f"{m} imports {t} (line {line})"
        for m in MODULES
        if not m.startswith("proxy.server") and m != "proxy.cli"
        for t, _, line in _imports(m)
        if t == "proxy.server" or t.startswith("proxy.server.")
    ]
    assert offenders == []


def test_no_module_imports_another_modules_private_names() -> None:
    offenders = [
        f"{m} imports {t}.{n} (line {line})"
        for m in MODULES
        for t, names, line in _imports(m)
        for n in names
        if n.startswith("_") and not n.startswith("__") and t != m
    ]
    assert offenders == []


def test_modules_are_short() -> None:
    long = {
        name: n
        for name, path in MODULES.items()
        if (n := len(path.read_text().splitlines())) > MAX_MODULE_LINES and name not in LONG_MODULES
    }
    assert long == {}


def _functions() -> Iterator[tuple[str, int]]:
    for name, path in MODULES.items():
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                assert node.end_lineno is not None
                yield f"{name}:{node.name}", node.end_lineno - node.lineno + 1


def test_functions_are_short() -> None:
    long = {f: n for f, n in _functions() if n > MAX_FUNCTION_LINES and f not in LONG_FUNCTIONS}
    assert long == {}


@pytest.mark.parametrize("module", ["proxy.crypto", "proxy.s3", "proxy.access", "proxy.net"])
def test_the_pure_core_does_no_io(module: str) -> None:
    """crypto/, s3/, access/ and net/ decide; they neither serve nor call out."""
    io = ("aiohttp", "asyncio", "boto3", "botocore.session", "socket", "proxy.store", "proxy.server", "proxy.kms")
    offenders = []
    for m, path in MODULES.items():
        if not m.startswith(module + ".") and m != module:
            continue
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import | ast.ImportFrom):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                offenders += [f"{m}: {n}" for n in names if n.startswith(io)]
    assert offenders == []
