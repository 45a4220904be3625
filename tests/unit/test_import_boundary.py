"""cmdop/core stays pure: it imports no I/O, concurrency, network or kernel libraries."""

from __future__ import annotations

import ast
from pathlib import Path

CORE = Path(__file__).resolve().parents[2] / "cmdop" / "core"
FORBIDDEN = {"trio", "grpc", "yaml", "cryptography", "socket", "subprocess", "pyseccomp",
             "threading", "asyncio", "requests", "urllib"}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_core_imports_nothing_impure():
    files = sorted(CORE.rglob("*.py"))
    assert files, "cmdop/core has no modules"
    offenders = {str(p.relative_to(CORE)): sorted(_imports(p) & FORBIDDEN) for p in files}
    offenders = {k: v for k, v in offenders.items() if v}
    assert offenders == {}, f"core modules import I/O libraries: {offenders}"


def test_core_does_not_import_outer_layers():
    for path in CORE.rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("cmdop."):
                assert node.module.startswith("cmdop.core"), f"{path} imports {node.module}"


PACKAGE = CORE.parent


def _module_imports(path: Path) -> set[str]:
    """Every module name `path` imports, in full (`grpc.aio`, `cmdop.relay.proto.relay_pb2`)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from cmdop.daemon import protocol` imports cmdop.daemon.protocol
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def test_grpc_is_imported_in_exactly_one_module():
    """The relay's service glue lives in one adapter; generated messages never import grpc."""
    users = sorted(str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py")
                   if any(n == "grpc" or n.startswith("grpc.") for n in _module_imports(p)))
    assert users == ["adapters/relay_grpc.py"]


def test_the_cli_reaches_the_daemon_only_through_its_client():
    """CLI modules never import the daemon's server side (service, app internals, socket
    server): they talk to it through cmdop.daemon.client (and start it via daemon.app)."""
    allowed = {"cmdop.daemon.client", "cmdop.daemon.app", "cmdop.daemon.status",
               "cmdop.daemon.protocol"}
    for path in (PACKAGE / "cli").glob("*.py"):
        daemon = {n for n in _module_imports(path) if n.startswith("cmdop.daemon")}
        bad = {n for n in daemon
               if not any(n == m or n.startswith(m + ".") for m in allowed)}
        assert not bad, f"{path.name} imports {sorted(bad)}"
