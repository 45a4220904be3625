"""The code the agent runs, which the floor protects: `own_code()` and the interpreter it runs
under (`agent_interpreter()`). Used by the static floor's protected dirs and by the kernel floor
(cmdop.adapters.kernel_floor_fs re-exports both); imports only os and sys."""

from __future__ import annotations

import functools
import os
import sys


def own_code(runtime: bool = False) -> list[str]:
    """The code the agent runs: the cmdop package (a checkout, site-packages or the zipapp's
    unpacked copy), the site-packages it imports from, and the zipapp file itself. Rewriting any
    of them is rewriting the gate. With `runtime`, also the interpreter and its standard library
    (for the kernel floor, which freezes them; the static floor does not deny naming them)."""
    import cmdop

    out = [os.path.dirname(os.path.abspath(cmdop.__file__))]
    # The dependencies it imports, and the `.pth` files any later Python of this install runs.
    out += [p for p in sys.path if p.endswith(("site-packages", "dist-packages")) and os.path.isdir(p)]
    entry = os.path.abspath(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    if entry and os.path.isfile(entry) and (entry.endswith(".pyz") or _is_zip(entry)):
        out.append(entry)
    if not runtime:
        return out
    # The interpreter and its standard library: the sandbox server is started from them (again
    # after a namespace rebuild or a killed server), before it confines itself, so a command
    # that could replace them would run as the agent, unconfined (red team, round 1).
    import sysconfig

    out.append(agent_interpreter())
    for key in ("stdlib", "platstdlib"):
        lib = sysconfig.get_paths().get(key)
        if lib and os.path.isdir(lib):
            out.append(os.path.realpath(lib))
    return list(dict.fromkeys(out))


def _is_zip(path: str) -> bool:
    import zipfile  # only for a zipapp not named .pyz: zipfile imports shutil, bz2 and lzma

    return zipfile.is_zipfile(path)


@functools.cache
def agent_interpreter() -> str:
    """The real path of this process's interpreter, fixed at the first call (before any command
    ran): the sandbox server is always started from it, and the kernel floor keeps it read-only,
    so swapping a venv's `bin/python` link later changes nothing."""
    return os.path.realpath(sys.executable)
