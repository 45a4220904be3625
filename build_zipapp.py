#!/usr/bin/env python3
"""Build dist/cmdop.pyz: one file that runs cmdop on any glibc >= 2.17 Linux box with any of
CPython 3.10-3.13 (3.14 on request), and write dist/SHA256SUMS beside it.

What this promises:
- Dependencies are exactly the pins in pyproject.toml plus the transitive pins below, as
  binary wheels for the target platform (default manylinux2014_x86_64) and each target CPython
  (default DEFAULT_PYTHONS). A wheel that is not pinned makes the build fail rather
  than drift.
- One file for every target CPython: the per-version native modules side by side (their names
  carry the version, `*.cpython-310-x86_64-linux-gnu.so`), everything else once. A pure file
  that differs between the versions' wheels fails the build; an abi3 module that differs is
  taken from the oldest version's wheel (abi3 modules run on every later CPython). The #! line
  is `/usr/bin/env python3`; a single-version build (--python-version 3.11) keeps
  `/usr/bin/env python3.11`. cmdop/_build_info.py and the second line (`# cmdop-pythons=`)
  name the versions.
- Wheels are downloaded once into a cache (default .ci/.cache/wheels/PLATFORM-cpVER); a warm
  cache needs no network at all.
- Reproducible: the same sources, pins and SOURCE_DATE_EPOCH give the same bytes. Entries are
  written in sorted order with one timestamp and normalised permissions. SOURCE_DATE_EPOCH
  defaults to the last git commit time (else 1980-01-01).
- The output is written beside its final name and renamed into place: no half-written pyz.
- The pyz imports from its unpack cache ($SHIV_ROOT or ~/.shiv) only when the cache and every
  directory above it belong to the user running it (or root) and no one else can write them
  (FAST_MAIN); it unpacks with group/other write masked. CPython 2.7-3.7 get one line.

Runs on CPython 3.10 and newer.

Usage: python build_zipapp.py [--platform manylinux2014_aarch64] [--python-version 3.11,3.12]
                              [--output dist/cmdop.pyz] [--wheel-cache DIR] [--offline]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import time
import zipfile

if sys.version_info < (3, 10):  # an old python3 gets a sentence, not a trace
    sys.exit("build_zipapp: error: Python %d.%d is too old to run the build; use CPython 3.10 "
             "or newer (supported targets: 3.10, 3.11, 3.12, 3.13), e.g. python3.11 "
             "build_zipapp.py" % sys.version_info[:2])

import re  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parent
DEFAULT_PLATFORM = "manylinux2014_x86_64"
ENTRY_POINT = "cmdop.cli.main:entry"
# CPython versions cmdop can be built for (pyproject.toml requires-python). The default build
# carries 3.10-3.13; 3.14 has every wheel but no 3.14 interpreter here has run the tests: opt-in
# (--python-version 3.14, or all).
SUPPORTED_PYTHONS = ("3.10", "3.11", "3.12", "3.13", "3.14")
DEFAULT_PYTHONS = ("3.10", "3.11", "3.12", "3.13")
DEFAULT_PYTHON = "3.11"  # copy_project's default for a single-version build
MIN_BUILDER = (3, 10)
# Written into the pyz as cmdop/_build_info.py; cmdop.cli.preflight compares it with the running
# interpreter so a wrong python3 gets one clear line instead of an ImportError from a .so.
BUILD_INFO = "cmdop/_build_info.py"
ZIP_EPOCH_MIN = 315532800  # 1980-01-01T00:00:00Z, the earliest time a zip entry can carry

# Transitive dependencies of the pinned direct ones (trio, cryptography, ...), pinned here so the
# zipapp never picks up a newer release silently. Keep in step with the versions in .venv.
TRANSITIVE_PINS = {
    "aiohappyeyeballs": "2.7.1",     # aiohttp's
    "aiosignal": "1.4.0",            # aiohttp's
    "async-timeout": "5.0.1",        # aiohttp's on 3.10, redis's below 3.11.3
    "attrs": "26.1.0",
    "cffi": "2.1.1",
    "exceptiongroup": "1.3.2",       # trio's, on CPython 3.10 only
    "frozenlist": "1.8.0",           # aiohttp's
    "idna": "3.20",
    "multidict": "7.1.0",            # aiohttp's; 7.2 dropped CPython 3.10 (the venv may be newer)
    "outcome": "1.3.0.post0",
    "propcache": "0.5.4",            # aiohttp's
    "pycparser": "3.11",             # 3.12 dropped CPython 3.10 (the venv may be newer)
    "sniffio": "1.3.1",
    "sortedcontainers": "2.4.0",
    "typing-extensions": "4.16.0",
    "yarl": "1.25.1",                # aiohttp's
}


# Backports a target needs only on older CPythons (their requirement carries a marker such as
# `python_version < "3.11"`). pip download evaluates markers for the interpreter running it,
# not for --python-version, so a 3.11 builder would leave them out of a 3.10 target: named here.
BACKPORTS = {
    "3.10": ("exceptiongroup", "async-timeout"),  # trio's and aiohttp's
    "3.11": ("async-timeout",),   # redis's below 3.11.3 (Debian 12 ships 3.11.2)
}


class BuildError(Exception):
    """A build step failed; the message says what to do."""


def normalise(name: str) -> str:
    """PEP 503 name: lower case, runs of -_. become one dash."""
    out = []
    for ch in name.lower():
        out.append("-" if ch in "-_." else ch)
    return "-".join(filter(None, "".join(out).split("-")))


def _project_dependencies(text: str) -> list[str]:
    """`project.dependencies` of a pyproject.toml: tomllib where there is one (3.11+), else the
    one array read by hand (a list of double-quoted strings, comments allowed)."""
    try:
        import tomllib
    except ImportError:  # CPython 3.10
        section = re.search(r"^\[project\]\s*$(.*?)(?=^\[|\Z)", text, re.M | re.S)
        array = section and re.search(r"^dependencies\s*=\s*\[(.*?)^\]", section.group(1),
                                      re.M | re.S)
        if not array:
            raise BuildError("pyproject.toml has no [project] dependencies = [...] list")
        body = "\n".join(line.split("#", 1)[0] for line in array.group(1).splitlines())
        return re.findall(r'"([^"\\]*)"', body)
    deps = tomllib.loads(text)["project"]["dependencies"]
    return [str(d) for d in deps]


def direct_pins(pyproject: Path = ROOT / "pyproject.toml") -> dict[str, str]:
    """`project.dependencies` from pyproject.toml; every entry must be `name==version`."""
    deps = _project_dependencies(pyproject.read_text())
    pins: dict[str, str] = {}
    for dep in deps:
        name, sep, version = dep.partition("==")
        if not sep or not version or any(c in version for c in "<>=!~;, "):
            raise BuildError(f"dependency {dep!r} in pyproject.toml is not pinned as name==version")
        pins[normalise(name.strip())] = version.strip()
    return pins


def all_pins() -> dict[str, str]:
    pins = {normalise(k): v for k, v in TRANSITIVE_PINS.items()}
    pins.update(direct_pins())
    return pins


def wheel_name_version(filename: str) -> tuple[str, str]:
    parts = filename[: -len(".whl")].split("-")
    return normalise(parts[0]), parts[1]


def fetch_wheels(cache: Path, platform: str, python_version: str, offline: bool) -> list[Path]:
    """Return one wheel per pinned package for the target, downloading into `cache` if needed."""
    pins = all_pins()
    direct = direct_pins()
    cache.mkdir(parents=True, exist_ok=True)
    manifest = cache / "manifest.json"
    wanted = dict(direct)
    wanted.update({normalise(n): pins[normalise(n)] for n in BACKPORTS.get(python_version, ())})
    key = {"platform": platform, "python": python_version, "pins": pins,
           "requirements": sorted(wanted)}
    if manifest.exists():
        recorded = json.loads(manifest.read_text())
        wheels = [cache / w for w in recorded.get("wheels", [])]
        if recorded.get("key") == key and wheels and all(w.is_file() for w in wheels):
            return wheels
    if offline:
        raise BuildError(f"wheel cache {cache} is cold or stale and --offline was given; "
                         "run once with network access (without --offline) to fill it")
    abi = "cp" + python_version.replace(".", "")
    with tempfile.TemporaryDirectory() as tmp:
        reqs = Path(tmp, "requirements.txt")
        reqs.write_text("".join(f"{n}=={v}\n" for n, v in sorted(wanted.items())))
        cons = Path(tmp, "constraints.txt")
        cons.write_text("".join(f"{n}=={v}\n" for n, v in sorted(pins.items())))
        dest = Path(tmp, "wheels")
        cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check",
               "--only-binary=:all:", "--platform", platform, "--python-version", python_version,
               "--implementation", "cp", "--abi", abi, "--abi", "abi3", "--abi", "none",
               "--find-links", str(cache), "-d", str(dest), "-r", str(reqs), "-c", str(cons)]
        env = dict(os.environ, PIP_CONSTRAINT=str(cons))
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            cached = {wheel_name_version(w.name) for w in cache.glob("*.whl")}
            uncached = sorted(n for n, v in pins.items() if (n, v) not in cached)
            if _looks_offline(proc.stderr) or (uncached and _looks_unresolved(proc.stderr)):
                raise BuildError(
                    f"cannot download the wheels: the wheel cache {cache} is cold (missing "
                    f"{', '.join(uncached[:5])}{', ...' if len(uncached) > 5 else ''}) and pip "
                    "could not fetch them - is there no network (or no package index)? Run "
                    "the build once with network access to fill the cache; after that it needs "
                    "none (--offline enforces it). pip said: "
                    + (proc.stderr.strip().splitlines() or ["nothing"])[-1][:300])
            raise BuildError("pip download failed:\n" + proc.stderr.strip()[-2000:])
        chosen: dict[str, Path] = {}
        for whl in sorted(dest.glob("*.whl")):
            name, version = wheel_name_version(whl.name)
            if pins.get(name) != version:
                raise BuildError(f"{name}=={version} is needed but not pinned; add it to "
                                 "TRANSITIVE_PINS in build_zipapp.py")
            if not _wheel_fits(whl.name, platform, python_version):
                raise BuildError(f"pip chose {whl.name}, which does not fit {platform}")
            if not (cache / whl.name).is_file():
                shutil.copyfile(whl, cache / whl.name)
            chosen[name] = cache / whl.name
    missing = sorted(set(wanted) - set(chosen))
    if missing:
        raise BuildError(f"no wheel found for {missing} on {platform}/cp{python_version}")
    wheels = [chosen[n] for n in sorted(chosen)]
    manifest.write_text(json.dumps({"key": key, "wheels": [w.name for w in wheels]}, indent=1))
    return wheels


_OFFLINE_SIGNS = ("Failed to establish a new connection", "Temporary failure in name resolution",
                  "Name or service not known", "Network is unreachable", "No route to host",
                  "ConnectionError", "NewConnectionError", "ProxyError", "Connection refused",
                  "Could not fetch URL", "connection broken", "Max retries exceeded")


def _looks_offline(stderr: str) -> bool:
    """True if pip's failure is the network's (pip then often reports only "conflicting
    dependencies" or "no matching distribution", after retry warnings naming the cause)."""
    text = stderr.lower()
    return any(sign.lower() in text for sign in _OFFLINE_SIGNS)


def _looks_unresolved(stderr: str) -> bool:
    """pip's words when it found no candidates at all (what an unreachable index looks like)."""
    text = stderr.lower()
    return any(sign in text for sign in ("conflicting dependencies", "resolutionimpossible",
                                         "no matching distribution", "could not find a version"))


def _wheel_fits(filename: str, platform: str, python_version: str) -> bool:
    """True if the wheel's tags can run on the target (pure, abi3, or this cpython's)."""
    tags = filename[: -len(".whl")].split("-")[-3:]
    pyt, abit, platt = tags
    arch = platform.split("_", 1)[1] if platform.startswith("manylinux") else platform
    if platt != "any" and not any(p.endswith(arch) for p in platt.split(".")):
        return False
    cp = "cp" + python_version.replace(".", "")
    return abit in ("none", "abi3", cp) or cp in pyt.split(".")


def install_wheels(wheels: list[Path], site: Path) -> None:
    """Unpack wheels into `site` as pip would for a --target install (no scripts, no pyc)."""
    for whl in wheels:
        with zipfile.ZipFile(whl) as zf:
            for info in zf.infolist():
                name = info.filename
                if name.endswith("/"):
                    continue
                first, _, rest = name.partition("/")
                if first.endswith(".data"):
                    kind, _, rest = rest.partition("/")
                    if kind not in ("purelib", "platlib"):
                        continue  # scripts, headers, data: not needed inside the zipapp
                    name = rest
                dest = site / name
                dest.parent.mkdir(parents=True, exist_ok=True)
                dest.write_bytes(zf.read(info))
                if (info.external_attr >> 16) & stat.S_IXUSR:
                    dest.chmod(0o755)


# Files that legitimately differ between one package's wheels for two CPythons: the list of
# installed files and the wheel's tags. The merged copy lists the union of their lines.
_MERGED_METADATA = ("RECORD", "WHEEL")


def merge_sites(sites: dict[str, Path], site: Path) -> None:
    """Lay the per-version installs `sites` ({"3.10": dir, ...}) into one `site`.

    Version-tagged native modules coexist by name. A file in several installs must be the same
    bytes, except an abi3 module (the oldest version's is kept: abi3 runs on every later CPython)
    and dist-info metadata (the oldest version's, with the lines of RECORD and WHEEL merged). Anything else that differs raises
    BuildError: one pyz cannot hold two versions of a pure module."""
    origin: dict[str, str] = {}
    for version in sorted(sites, key=_version_key):
        src = sites[version]
        for path in sorted(p for p in src.rglob("*") if not p.is_dir()):
            rel = path.relative_to(src).as_posix()
            dest = site / rel
            if rel not in origin:
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(path, dest)
                dest.chmod(path.stat().st_mode & 0o777)
                origin[rel] = version
                continue
            new, old = path.read_bytes(), dest.read_bytes()
            if new == old or rel.endswith(".abi3.so"):
                continue
            top = rel.split("/", 1)[0]
            if top.endswith(".dist-info"):  # metadata, never imported: the oldest wheel's
                if rel in (f"{top}/{leaf}" for leaf in _MERGED_METADATA):
                    lines = old.decode().splitlines()
                    lines += [line for line in new.decode().splitlines() if line not in lines]
                    dest.write_text("".join(line + "\n" for line in lines))
                continue
            raise BuildError(f"{rel} differs between the CPython {origin[rel]} and {version} "
                             "wheels; one pyz cannot carry both (pin a release whose pure files "
                             "are the same for every version, or build one pyz per version with "
                             "--python-version)")


def _version_key(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split("."))


def copy_project(site: Path, python_versions: tuple[str, ...] = (DEFAULT_PYTHON,)) -> None:
    """Copy the cmdop package (sources and data files, no caches) into `site`, plus
    cmdop/_build_info.py naming the CPython X.Y versions the build's native wheels are for."""
    src = ROOT / "cmdop"
    for path in sorted(src.rglob("*")):
        if path.is_dir() or "__pycache__" in path.parts or path.suffix in (".pyc", ".pyo"):
            continue
        if path.relative_to(ROOT).as_posix() == BUILD_INFO:
            continue  # a stray one in the checkout: the build writes its own
        dest = site / path.relative_to(ROOT)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, dest)
    (site / BUILD_INFO).write_text(
        "# Written by build_zipapp.py: the CPythons this build carries native modules for.\n"
        f"PYTHON_VERSIONS = {tuple(python_versions)!r}\n")
    version = _project_version()
    info = site / f"cmdop-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: cmdop\nVersion: {version}\n")
    (info / "entry_points.txt").write_text(f"[console_scripts]\ncmdop = {ENTRY_POINT}\n")


def _project_version() -> str:
    for line in (ROOT / "cmdop" / "__init__.py").read_text().splitlines():
        if line.startswith("__version__"):
            return line.split("=", 1)[1].strip().strip("\"'")
    raise BuildError("cmdop/__init__.py has no __version__")


def source_date_epoch() -> int:
    """$SOURCE_DATE_EPOCH, else the last commit time, else 1980-01-01."""
    if os.environ.get("SOURCE_DATE_EPOCH"):
        return max(int(os.environ["SOURCE_DATE_EPOCH"]), ZIP_EPOCH_MIN)
    try:
        out = subprocess.run(["git", "-C", str(ROOT), "log", "-1", "--format=%ct"],
                             capture_output=True, text=True, timeout=10)
        if out.returncode == 0 and out.stdout.strip():
            return max(int(out.stdout.strip()), ZIP_EPOCH_MIN)
    except (OSError, ValueError, subprocess.TimeoutExpired):
        pass
    return ZIP_EPOCH_MIN


def run_shiv(site: Path, output: Path, shebang: str, epoch: int) -> None:
    """Let shiv lay out the zipapp (bootstrap, environment.json, __main__.py)."""
    cmd = [sys.executable, "-m", "shiv", "--site-packages", str(site), "-e", ENTRY_POINT,
           "-p", shebang, "-o", str(output), "--reproducible", "--uncompressed",
           "--compile-pyc"]  # canonicalise() compresses, once
    env = dict(os.environ, SOURCE_DATE_EPOCH=str(epoch))
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise BuildError("shiv failed:\n" + (proc.stderr or proc.stdout).strip()[-2000:])


# Replaces shiv's two-line __main__.py. Shiv's bootstrap imports compileall, subprocess, hashlib,
# zipfile and more, and is compiled from source on every start (zipimport caches no bytecode):
# about 40 ms. Once this build's site-packages are extracted, they are all a start needs, so the
# fast path adds them to sys.path the way shiv would (site.addsitedir, ahead of other site dirs)
# and calls the entry point. Anything unusual (SHIV_* overrides) goes through shiv.
#
# Whatever sits in the extraction directory is imported (and its *.pth files executed), so before
# any import from it - and before extracting into it - the cache directory and every directory
# above it must be owned by this user or root and writable by no one else (a sticky directory
# such as /tmp may sit above it, never be it): otherwise another local user could plant code that
# a root agent runs. Extraction runs under a umask that keeps group and others from writing.
# The code below must parse on any Python (2.7 and 3.6 included) so an old one gets one line.
FAST_MAIN = """\
# Written by build_zipapp.py: refuses an unpack cache others can write, unpacks on the first
# start, then starts cmdop without shiv's bootstrap (SHIV_* overrides still go through it).
import os
import sys

_PYTHONS = {pythons!r}
_VERSION = {version!r}


def _fail(what, hint):
    sys.stderr.write("cmdop: error: " + what + "\\nhint: " + hint + "\\n")
    sys.exit(1)


def _too_old():
    # cmdop's own code cannot even be compiled by these: answer here, in the words of
    # cmdop.cli.preflight, instead of a SyntaxError.
    if sys.version_info[:2] >= (3, 8):
        return
    if sys.argv[1:] == ["--version"]:
        sys.stdout.write("cmdop " + _VERSION + "\\n")
        sys.exit(0)
    newest = _PYTHONS[-1]
    _fail("this cmdop.pyz is built for CPython " + ", ".join(_PYTHONS) + "; this is "
          + ".".join(str(n) for n in sys.version_info[:3]),
          "run it with one of " + ", ".join("python" + v for v in _PYTHONS)
          + " (e.g. `python" + newest + " " + (sys.argv[0] or "cmdop.pyz") + "`)")


def _unsafe_dir(path, last):
    # Why another user could change what is imported from `path` (and the directories above
    # it), or None. `last`: the directories from which the cache starts; none may be sticky.
    # The path as written and as resolved: a symlink on the way must not be another user's
    # either (they could point it elsewhere after the check).
    import stat

    me = os.geteuid()
    for where in sorted(set((os.path.abspath(path), os.path.realpath(path)))):
        parts = where.split(os.sep)
        for i in range(1, len(parts) + 1):
            d = os.sep.join(parts[:i]) or os.sep
            try:
                st = os.lstat(d)
            except OSError:
                if i > len(parts) - 2:  # this build's directories: created under our umask
                    break
                return d + " cannot be read (" + str(sys.exc_info()[1]) + ")"
            if st.st_uid not in (0, me):
                return d + " belongs to uid " + str(st.st_uid)
            if stat.S_ISLNK(st.st_mode):
                continue  # (a symlink's own mode is always 777)
            open_to_others = st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
            if open_to_others and (i > len(parts) - last or not st.st_mode & stat.S_ISVTX):
                return d + " is writable by other users (mode " + oct(st.st_mode & 0o7777) + ")"
    return None


def _cache_dirs():
    root = os.path.expanduser(os.environ.get("SHIV_ROOT") or "~/.shiv")
    name = os.path.basename(os.path.realpath(sys.argv[0]))
    target = os.path.join(root, name + "_" + {build_id!r})
    return root, target, os.path.join(target, "site-packages")


def _checked_cache():
    root, target, site_packages = _cache_dirs()
    old = os.umask(0o077)
    try:
        if not os.path.isdir(root):
            os.makedirs(root)
    except OSError:
        pass  # the check below names what is wrong
    finally:
        os.umask(old)
    why = _unsafe_dir(site_packages, 3)
    if why:
        _fail("refusing to run code from the unpack cache " + target + ": " + why,
              "remove that directory, or set SHIV_ROOT to a directory only you (or root) can "
              "write")
    return site_packages


_too_old()
_site_packages = _checked_cache()
_old_umask = os.umask(0o022)
os.umask(_old_umask | 0o022)
if any(k.startswith("SHIV_") and k != "SHIV_ROOT" for k in os.environ):
    import _bootstrap  # overrides: shiv's own start (under the tightened umask)

    _bootstrap.bootstrap()
else:
    if not os.path.isdir(_site_packages):
        from pathlib import Path

        import _bootstrap
        from _bootstrap.environment import Environment

        try:
            with _bootstrap.current_zipfile() as _archive:
                _env = Environment.from_json(_archive.read("environment.json").decode())
                _bootstrap.extract_site_packages(_archive, Path(_site_packages).parent,
                                                 _env.compile_pyc, _env.compile_workers)
        except OSError as _exc:  # SHIV_ROOT a file, a full disk, a directory we cannot write
            _fail("cannot unpack into " + os.path.dirname(_site_packages) + ": "
                  + (_exc.strerror or str(_exc)) + (" (" + str(_exc.filename) + ")" if _exc.filename else ""),
                  "set SHIV_ROOT to a directory you can write (default ~/.shiv), with room for ~160 MB")
    os.umask(_old_umask)
    import site

    _n = len(sys.path)
    _i = next((i for i, p in enumerate(sys.path)
               if os.path.basename(p) in ("site-packages", "dist-packages")), _n)
    site.addsitedir(_site_packages)
    sys.path[:] = sys.path[:_i] + sys.path[_n:] + sys.path[_i:_n]
    from {module} import {func}

    {func}()
"""


def versions_line(python_versions: tuple[str, ...], platform: str = DEFAULT_PLATFORM) -> bytes:
    """The line after the #! line: the CPythons the pyz runs on, for install.sh (which reads it
    with `head`, before any Python has been chosen). Not the zip comment: the zipimport of
    CPython 2.7-3.7 cannot read an archive with a comment, and would run the file as a script
    (a SyntaxError) instead of saying which Python it needs. `cmdop-arch=` names the machine
    (`uname -m`) the native modules are for."""
    # manylinux2014_x86_64, manylinux_2_17_aarch64, linux_x86_64: the machine is the tail
    arch = next((a for a in ("x86_64", "aarch64", "ppc64le", "s390x", "armv7l", "i686")
                 if platform.endswith(a)), platform.rsplit("_", 1)[-1])
    return f"# cmdop-pythons={','.join(python_versions)} cmdop-arch={arch}\n".encode()


def canonicalise(raw: Path, output: Path, epoch: int,
                 python_versions: tuple[str, ...] = (DEFAULT_PYTHON,),
                 platform: str = DEFAULT_PLATFORM) -> None:
    """Rewrite shiv's archive with sorted entries, one timestamp, normalised modes, the
    fast-start __main__.py and the versions' line after the #! line."""
    data = raw.read_bytes()
    if not data.startswith(b"#!"):
        raise BuildError("shiv output has no shebang line")
    shebang = data[: data.index(b"\n") + 1]
    date_time = time.gmtime(epoch)[:6]
    with zipfile.ZipFile(raw) as src, output.open("wb") as fd:
        environment = json.loads(src.read("environment.json"))
        module, _, func = ENTRY_POINT.partition(":")
        fast_main = FAST_MAIN.format(build_id=environment["build_id"], module=module, func=func,
                                     pythons=tuple(python_versions), version=_project_version())
        fd.write(shebang + versions_line(python_versions, platform))
        with zipfile.ZipFile(fd, "w") as dst:
            for info in sorted(src.infolist(), key=lambda i: i.filename):
                if info.filename.endswith("/"):
                    continue
                body = fast_main.encode() if info.filename == "__main__.py" else src.read(info)
                mode = 0o755 if (info.external_attr >> 16) & stat.S_IXUSR else 0o644
                zi = zipfile.ZipInfo(info.filename, date_time=date_time)
                zi.compress_type = zipfile.ZIP_DEFLATED
                zi.create_system = 3
                zi.external_attr = (stat.S_IFREG | mode) << 16
                dst.writestr(zi, body, compresslevel=6)
    output.chmod(0o755)


def write_sums(output: Path) -> Path:
    """Add or replace `output`'s line in SHA256SUMS beside it (sha256sum -c format)."""
    digest = hashlib.sha256(output.read_bytes()).hexdigest()
    sums = output.parent / "SHA256SUMS"
    lines = {}
    if sums.exists():
        for line in sums.read_text().splitlines():
            h, _, name = line.partition("  ")
            if name and (output.parent / name).exists():
                lines[name] = h
    lines[output.name] = digest
    tmp = sums.with_name(sums.name + ".tmp")
    tmp.write_text("".join(f"{h}  {n}\n" for n, h in sorted(lines.items())))
    os.replace(tmp, sums)
    return sums


def cache_dir(root: Path, platform: str, python_version: str) -> Path:
    """The wheel cache of one target under the cache root: ROOT/PLATFORM-cpXY."""
    return root / f"{platform}-cp{python_version.replace('.', '')}"


def build(platform: str, python_versions: tuple[str, ...], output: Path, cache_root: Path,
          offline: bool, shebang: str | None = None) -> str:
    """Build the zipapp for every CPython in `python_versions` at `output`; return its sha256."""
    epoch = source_date_epoch()
    wheels = {v: fetch_wheels(cache_dir(cache_root, platform, v), platform, v, offline)
              for v in python_versions}
    output.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="cmdop-build-") as tmp:
        site = Path(tmp, "site-packages")
        site.mkdir()
        sites = {}
        for version, found in wheels.items():
            sites[version] = Path(tmp, f"cp{version.replace('.', '')}")
            install_wheels(found, sites[version])
        merge_sites(sites, site)
        copy_project(site, python_versions)
        for path in site.rglob("*"):  # shiv copies modes from disk: make them umask-proof
            if path.is_dir():
                path.chmod(0o755)
            else:
                path.chmod(0o755 if path.stat().st_mode & stat.S_IXUSR else 0o644)
        raw = Path(tmp, "raw.pyz")
        if shebang is None:  # one version: its own name; several: whatever python3 the host has
            shebang = ("/usr/bin/env python" + python_versions[0] if len(python_versions) == 1
                       else "/usr/bin/env python3")
        run_shiv(site, raw, shebang, epoch)
        staged = output.with_name(f".{output.name}.tmp")
        try:
            canonicalise(raw, staged, epoch, python_versions, platform)
            os.replace(staged, output)
        finally:
            staged.unlink(missing_ok=True)
    write_sums(output)
    return hashlib.sha256(output.read_bytes()).hexdigest()


def default_output(platform: str) -> Path:
    arch = platform.split("_", 1)[1] if "_" in platform else platform
    name = "cmdop.pyz" if arch == "x86_64" else f"cmdop-{arch}.pyz"
    return ROOT / "dist" / name


def parse_versions(text: str | None) -> tuple[str, ...]:
    """None (the default set), `all` or a comma-separated list of X.Y, sorted and
    de-duplicated; ValueError names an unsupported one."""
    if text is None:
        return DEFAULT_PYTHONS
    if text.strip() == "all":
        return SUPPORTED_PYTHONS
    versions = {v.strip() for v in text.split(",") if v.strip()}
    bad = sorted(versions - set(SUPPORTED_PYTHONS)) or ([] if versions else [text])
    if bad:
        raise ValueError(f"--python-version {', '.join(bad)} is not supported; cmdop runs on "
                         f"CPython {', '.join(SUPPORTED_PYTHONS)}")
    return tuple(sorted(versions, key=_version_key))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Build the cmdop zipapp with shiv.")
    parser.add_argument("--platform", default=DEFAULT_PLATFORM,
                        help=f"wheel platform tag (default {DEFAULT_PLATFORM}; "
                             "e.g. manylinux2014_aarch64)")
    parser.add_argument("--python-version",
                        help="target CPython X.Y, a comma-separated list, or all "
                             f"({', '.join(SUPPORTED_PYTHONS)}); default "
                             f"{', '.join(DEFAULT_PYTHONS)} in one file")
    parser.add_argument("--output", type=Path, help="output file (default dist/cmdop.pyz, "
                        "dist/cmdop-ARCH.pyz for other architectures)")
    parser.add_argument("--wheel-cache", type=Path, help="wheel cache root, one PLATFORM-cpXY "
                        "directory per target in it (default .ci/.cache/wheels)")
    parser.add_argument("--python-shebang", help="interpreter for the #! line (default "
                        "/usr/bin/env python3; /usr/bin/env pythonX.Y for a single version)")
    parser.add_argument("--offline", action="store_true", help="fail instead of downloading")
    parser.add_argument("--fetch-only", action="store_true",
                        help="only fill the wheel cache (for CI set-up), build nothing")
    args = parser.parse_args(argv)
    try:
        versions = parse_versions(args.python_version)
    except ValueError as exc:
        print(f"build_zipapp: error: {exc}", file=sys.stderr)
        return 2
    cache_root = args.wheel_cache or ROOT / ".ci" / ".cache" / "wheels"
    if args.fetch_only:
        for version in versions:
            cache = cache_dir(cache_root, args.platform, version)
            try:
                wheels = fetch_wheels(cache, args.platform, version, args.offline)
            except BuildError as exc:
                print(f"build_zipapp: error: {exc}", file=sys.stderr)
                return 1
            print(f"build_zipapp: {len(wheels)} wheels for {cache.name} in {cache}")
        return 0
    output = (args.output or default_output(args.platform)).resolve()
    try:
        digest = build(args.platform, versions, output, cache_root, args.offline,
                       args.python_shebang)
    except BuildError as exc:
        print(f"build_zipapp: error: {exc}", file=sys.stderr)
        return 1
    size = output.stat().st_size
    print(f"{output}  {size / 1e6:.1f} MB  CPython {', '.join(versions)}  sha256 {digest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
