"""Start-up checks that turn "this interpreter cannot run this build" into one clear line.

- `check_interpreter()`: a zipapp built by build_zipapp.py carries `cmdop/_build_info.py` with
  the CPython major.minor its native wheels (tree_sitter, grpc, cryptography, pyseccomp, ...)
  were built for. Run by any other CPython, those modules cannot load: say so before anything
  tries. Outside a zipapp (a venv, a checkout) there is no such file and nothing is checked.
  Cost: one tiny import, once; `cmdop --version` and the lean `cmdop exec` path skip it.
- `check_agent_parts()`: `cmdop agent run` must not come up (READY, "agent ready") when the
  permission gate, the audit writer or the sandboxed tool pipeline cannot even be imported; it
  fails at start instead. A bad policy file is not this case (the daemon keeps running on the
  last good policy / deny-all, cmdop.daemon.components).
- `native_import_error(exc)`: recognises an ImportError from a native module a command loaded
  late, so main() can print the same one-line explanation instead of "internal error".
"""

from __future__ import annotations

import sys

from cmdop.core.errors import CmdopError

BUILD_INFO_MODULE = "cmdop._build_info"

# Top-level packages of the native modules the zipapp ships (C extensions built per CPython).
NATIVE_PACKAGES = ("tree_sitter", "tree_sitter_bash", "grpc", "cryptography", "pyseccomp",
                   "seccomp", "_cffi_backend", "yaml", "multidict", "yarl", "frozenlist",
                   "propcache", "aiohttp")

# What `agent run` needs to serve calls at all: the gate, the audit writer, the pipeline and
# the sandbox launcher (each pulls in its native modules).
AGENT_PARTS = (
    ("permission gate", "cmdop.adapters.gatekeeper"),
    ("audit log", "cmdop.adapters.audit_log"),
    ("tool pipeline", "cmdop.pipeline"),
    ("sandbox", "cmdop.adapters.launcher"),
)


class InterpreterMismatch(CmdopError):
    """This build's native modules were made for another CPython."""

    exit_code = 1


def built_for() -> str | None:
    """The CPython "X.Y" this zipapp was built for; None outside a zipapp build."""
    import importlib

    try:
        info = importlib.import_module(BUILD_INFO_MODULE)
    except ImportError:
        return None
    value = getattr(info, "PYTHON_VERSION", None)
    return value if isinstance(value, str) and value else None


def running() -> str:
    """This interpreter as "X.Y.Z"."""
    v = sys.version_info
    return f"{v.major}.{v.minor}.{v.micro}"


def mismatch_error(wanted: str) -> InterpreterMismatch:
    """The one-line error (and hint) for a build made for CPython `wanted`."""
    v = sys.version_info
    return InterpreterMismatch(
        f"this cmdop.pyz is built for CPython {wanted}; this is {running()}",
        hint=f"run it with python{wanted} (e.g. `python{wanted} {_program()}`), or get the build "
             f"for this Python (build_zipapp.py --python-version {v.major}.{v.minor})")


def _program() -> str:
    import os

    argv0 = sys.argv[0] if sys.argv and sys.argv[0] else "cmdop.pyz"
    return os.path.abspath(argv0) if os.sep in argv0 else argv0


def check_interpreter(wanted: str | None = None) -> None:
    """Raise InterpreterMismatch when this zipapp was built for another CPython."""
    if wanted is None:
        wanted = built_for()
    if wanted is None:
        return
    v = sys.version_info
    if sys.implementation.name != "cpython" or f"{v.major}.{v.minor}" != wanted.strip():
        raise mismatch_error(wanted.strip())


def native_import_error(exc: BaseException) -> CmdopError | None:
    """A clear error for an ImportError raised by a native module, else None."""
    if not isinstance(exc, ImportError):
        return None
    name = (exc.name or "").split(".")[0]
    text = str(exc)
    native = (name in NATIVE_PACKAGES
              or any(f"'{p}'" in text or f"'{p}." in text for p in NATIVE_PACKAGES)
              or "undefined symbol" in text
              or any(tail in text for tail in (".so:", ".so'", ".so)")))
    if not native:
        return None
    wanted = built_for()
    if wanted is not None and wanted != f"{sys.version_info.major}.{sys.version_info.minor}":
        return mismatch_error(wanted)
    return CmdopError(f"a native module cannot be loaded by Python {running()}: {exc}",
                      hint="reinstall cmdop for this Python (or run it with the Python it was "
                           "built for)")


def check_agent_parts() -> None:
    """Raise CmdopError (exit 1) when a part `agent run` cannot serve calls without fails to
    import. Policy and config problems are not checked here: they surface once the agent runs."""
    import importlib

    for what, module in AGENT_PARTS:
        try:
            importlib.import_module(module)
        except ImportError as exc:
            wanted = built_for()
            v = sys.version_info
            if wanted is not None and wanted != f"{v.major}.{v.minor}":
                raise mismatch_error(wanted) from None
            raise CmdopError(f"the agent cannot start: {what} unavailable: {exc}",
                             hint="the agent never runs calls ungated; reinstall cmdop for "
                                  f"Python {running()} (or run it with the Python it was "
                                  "built for)") from None
