"""Start-up checks that turn "this interpreter cannot run this build" into one clear line.

- `check_interpreter()`: a zipapp built by build_zipapp.py carries `cmdop/_build_info.py` with
  the CPython major.minor versions its native wheels (tree_sitter, grpc, cryptography,
  pyseccomp, ...) were built for (PYTHON_VERSIONS; builds before the multi-version pyz wrote one
  PYTHON_VERSION). Run by any other CPython, those modules cannot load: say so before anything
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


def built_for() -> tuple[str, ...] | None:
    """The CPython "X.Y" versions this zipapp carries native modules for, oldest first; None
    outside a zipapp build. A build info naming nothing readable counts as naming nothing
    (so every interpreter is refused rather than none)."""
    import importlib

    try:
        info = importlib.import_module(BUILD_INFO_MODULE)
    except ImportError:
        return None
    several = getattr(info, "PYTHON_VERSIONS", None)
    one = getattr(info, "PYTHON_VERSION", None)
    if isinstance(several, (tuple, list)):
        found = [v.strip() for v in several if isinstance(v, str) and v.strip()]
    elif isinstance(one, str) and one.strip():
        found = [one.strip()]
    else:
        return ()
    return tuple(sorted(set(found), key=_version_key))


def _version_key(version: str) -> tuple[int, ...]:
    return tuple(int(p) if p.isdigit() else -1 for p in version.split("."))


def _this_minor() -> str:
    return f"{sys.version_info.major}.{sys.version_info.minor}"


def carries_this_python(wanted: tuple[str, ...]) -> bool:
    """True when a build for `wanted` has native modules this interpreter can load."""
    return sys.implementation.name == "cpython" and _this_minor() in wanted


def running() -> str:
    """This interpreter as "X.Y.Z"."""
    v = sys.version_info
    return f"{v.major}.{v.minor}.{v.micro}"


def mismatch_error(wanted: tuple[str, ...] | str) -> InterpreterMismatch:
    """The one-line error (and hint) for a build made for the CPython(s) `wanted`."""
    if isinstance(wanted, str):
        wanted = (wanted,)
    if not wanted:
        return InterpreterMismatch(
            "this cmdop.pyz does not say which CPython it is built for",
            hint="rebuild it with build_zipapp.py, or download the release again")
    names = ", ".join(wanted)
    newest = wanted[-1]
    choice = f"python{newest}" if len(wanted) == 1 else \
        "one of " + ", ".join(f"python{v}" for v in wanted)
    # A single-version build has siblings for other Pythons; the multi-version one is all there is.
    other = "" if len(wanted) > 1 else \
        f", or get the build for this Python (build_zipapp.py --python-version {_this_minor()})"
    return InterpreterMismatch(
        f"this cmdop.pyz is built for CPython {names}; this is {running()}",
        hint=f"run it with {choice} (e.g. `python{newest} {_program()}`){other}")


def _program() -> str:
    import os

    argv0 = sys.argv[0] if sys.argv and sys.argv[0] else "cmdop.pyz"
    return os.path.abspath(argv0) if os.sep in argv0 else argv0


def check_interpreter(wanted: tuple[str, ...] | None = None) -> None:
    """Raise InterpreterMismatch when this zipapp carries no native modules for this CPython."""
    if wanted is None:
        wanted = built_for()
    if wanted is None:
        return
    if not carries_this_python(wanted):
        raise mismatch_error(wanted)


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
    if wanted is not None and not carries_this_python(wanted):
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
            if wanted is not None and not carries_this_python(wanted):
                raise mismatch_error(wanted) from None
            raise CmdopError(f"the agent cannot start: {what} unavailable: {exc}",
                             hint="the agent never runs calls ungated; reinstall cmdop for "
                                  f"Python {running()} (or run it with the Python it was "
                                  "built for)") from None
