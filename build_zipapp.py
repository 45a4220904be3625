#!/usr/bin/env python3
"""Build dist/cmdop.pyz: one file that runs cmdop on any glibc >= 2.17 Linux box with the same
Python minor version, and write dist/SHA256SUMS beside it.

What this promises:
- Dependencies are exactly the pins in pyproject.toml plus the transitive pins below, as
  binary wheels for the target platform (default manylinux2014_x86_64, CPython 3.11). A wheel
  that is not pinned makes the build fail rather than drift.
- Wheels are downloaded once into a cache (default .ci/.cache/wheels/PLATFORM-cpVER); a warm
  cache needs no network at all.
- Reproducible: the same sources, pins and SOURCE_DATE_EPOCH give the same bytes. Entries are
  written in sorted order with one timestamp and normalised permissions. SOURCE_DATE_EPOCH
  defaults to the last git commit time (else 1980-01-01).
- The output is written beside its final name and renamed into place: no half-written pyz.

Usage: python build_zipapp.py [--platform manylinux2014_aarch64] [--python-version 3.11]
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

if sys.version_info < (3, 11):  # before tomllib: an old python3 gets a sentence, not a trace
    sys.exit("build_zipapp: error: Python %d.%d is too old to run the build; use CPython 3.11 "
             "or newer (supported targets: 3.11, 3.12, 3.13), e.g. python3.11 build_zipapp.py"
             % sys.version_info[:2])

import tomllib  # noqa: E402
from pathlib import Path

ROOT = Path(__file__).resolve().parent
DEFAULT_PLATFORM = "manylinux2014_x86_64"
DEFAULT_PYTHON = "3.11"
ENTRY_POINT = "cmdop.cli.main:entry"
# CPython versions cmdop runs on (pyproject.toml requires-python); the builder needs tomllib.
SUPPORTED_PYTHONS = ("3.11", "3.12", "3.13")
MIN_BUILDER = (3, 11)
# Written into the pyz as cmdop/_build_info.py; cmdop.cli.preflight compares it with the running
# interpreter so a wrong python3 gets one clear line instead of an ImportError from a .so.
BUILD_INFO = "cmdop/_build_info.py"
ZIP_EPOCH_MIN = 315532800  # 1980-01-01T00:00:00Z, the earliest time a zip entry can carry

# Transitive dependencies of the pinned direct ones (trio, cryptography, ...), pinned here so the
# zipapp never picks up a newer release silently. Keep in step with the versions in .venv.
TRANSITIVE_PINS = {
    "aiohappyeyeballs": "2.7.1",     # aiohttp's
    "aiosignal": "1.4.0",            # aiohttp's
    "attrs": "26.1.0",
    "cffi": "2.1.1",
    "frozenlist": "1.8.0",           # aiohttp's
    "idna": "3.20",
    "multidict": "7.2.1",            # aiohttp's
    "outcome": "1.3.0.post0",
    "propcache": "0.5.4",            # aiohttp's
    "pycparser": "3.12",
    "sniffio": "1.3.1",
    "sortedcontainers": "2.4.0",
    "typing-extensions": "4.16.0",
    "yarl": "1.25.1",                # aiohttp's
}


class BuildError(Exception):
    """A build step failed; the message says what to do."""


def normalise(name: str) -> str:
    """PEP 503 name: lower case, runs of -_. become one dash."""
    out = []
    for ch in name.lower():
        out.append("-" if ch in "-_." else ch)
    return "-".join(filter(None, "".join(out).split("-")))


def direct_pins(pyproject: Path = ROOT / "pyproject.toml") -> dict[str, str]:
    """`project.dependencies` from pyproject.toml; every entry must be `name==version`."""
    deps = tomllib.loads(pyproject.read_text())["project"]["dependencies"]
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
    key = {"platform": platform, "python": python_version, "pins": pins}
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
        reqs.write_text("".join(f"{n}=={v}\n" for n, v in sorted(direct.items())))
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
    missing = sorted(set(direct) - set(chosen))
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


def copy_project(site: Path, python_version: str = DEFAULT_PYTHON) -> None:
    """Copy the cmdop package (sources and data files, no caches) into `site`, plus
    cmdop/_build_info.py naming the CPython X.Y the build's native wheels are for."""
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
        "# Written by build_zipapp.py: the CPython this build's native modules were built for.\n"
        f"PYTHON_VERSION = {python_version!r}\n")
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
# and calls the entry point. Anything unusual (first run, SHIV_* overrides) goes through shiv.
FAST_MAIN = """\
# Written by build_zipapp.py: fast start when shiv has already extracted this build.
import os
import sys


def _extracted_site_packages():
    if any(k.startswith("SHIV_") and k != "SHIV_ROOT" for k in os.environ):
        return None
    root = os.path.expanduser(os.environ.get("SHIV_ROOT") or "~/.shiv")
    name = os.path.basename(os.path.realpath(sys.argv[0]))
    path = os.path.join(root, name + "_" + {build_id!r}, "site-packages")
    return path if os.path.isdir(path) else None


_site_packages = _extracted_site_packages()
if _site_packages is None:
    import _bootstrap

    _bootstrap.bootstrap()
else:
    import site

    _n = len(sys.path)
    _i = next((i for i, p in enumerate(sys.path)
               if os.path.basename(p) in ("site-packages", "dist-packages")), _n)
    site.addsitedir(_site_packages)
    sys.path[:] = sys.path[:_i] + sys.path[_n:] + sys.path[_i:_n]
    from {module} import {func}

    {func}()
"""


def canonicalise(raw: Path, output: Path, epoch: int) -> None:
    """Rewrite shiv's archive with sorted entries, one timestamp, normalised modes and the
    fast-start __main__.py."""
    data = raw.read_bytes()
    if not data.startswith(b"#!"):
        raise BuildError("shiv output has no shebang line")
    shebang = data[: data.index(b"\n") + 1]
    date_time = time.gmtime(epoch)[:6]
    with zipfile.ZipFile(raw) as src, output.open("wb") as fd:
        environment = json.loads(src.read("environment.json"))
        module, _, func = ENTRY_POINT.partition(":")
        fast_main = FAST_MAIN.format(build_id=environment["build_id"], module=module, func=func)
        fd.write(shebang)
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


def build(platform: str, python_version: str, output: Path, cache: Path, offline: bool,
          shebang: str | None = None) -> str:
    """Build the zipapp at `output` and return its sha256."""
    epoch = source_date_epoch()
    wheels = fetch_wheels(cache, platform, python_version, offline)
    output.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="cmdop-build-") as tmp:
        site = Path(tmp, "site-packages")
        site.mkdir()
        install_wheels(wheels, site)
        copy_project(site, python_version)
        for path in site.rglob("*"):  # shiv copies modes from disk: make them umask-proof
            if path.is_dir():
                path.chmod(0o755)
            else:
                path.chmod(0o755 if path.stat().st_mode & stat.S_IXUSR else 0o644)
        raw = Path(tmp, "raw.pyz")
        run_shiv(site, raw, shebang or f"/usr/bin/env python{python_version}", epoch)
        staged = output.with_name(f".{output.name}.tmp")
        try:
            canonicalise(raw, staged, epoch)
            os.replace(staged, output)
        finally:
            staged.unlink(missing_ok=True)
    write_sums(output)
    return hashlib.sha256(output.read_bytes()).hexdigest()


def default_output(platform: str) -> Path:
    arch = platform.split("_", 1)[1] if "_" in platform else platform
    name = "cmdop.pyz" if arch == "x86_64" else f"cmdop-{arch}.pyz"
    return ROOT / "dist" / name


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Build the cmdop zipapp with shiv.")
    parser.add_argument("--platform", default=DEFAULT_PLATFORM,
                        help=f"wheel platform tag (default {DEFAULT_PLATFORM}; "
                             "e.g. manylinux2014_aarch64)")
    parser.add_argument("--python-version", default=DEFAULT_PYTHON,
                        help=f"target CPython X.Y (default {DEFAULT_PYTHON})")
    parser.add_argument("--output", type=Path, help="output file (default dist/cmdop.pyz, "
                        "dist/cmdop-ARCH.pyz for other architectures)")
    parser.add_argument("--wheel-cache", type=Path, help="wheel cache directory "
                        "(default .ci/.cache/wheels/PLATFORM-cpXY)")
    parser.add_argument("--python-shebang", help="interpreter for the #! line "
                        "(default /usr/bin/env pythonX.Y)")
    parser.add_argument("--offline", action="store_true", help="fail instead of downloading")
    parser.add_argument("--fetch-only", action="store_true",
                        help="only fill the wheel cache (for CI set-up), build nothing")
    args = parser.parse_args(argv)
    if args.python_version not in SUPPORTED_PYTHONS:
        print(f"build_zipapp: error: --python-version {args.python_version} is not supported; "
              f"cmdop runs on CPython {', '.join(SUPPORTED_PYTHONS)}", file=sys.stderr)
        return 2
    tag = f"{args.platform}-cp{args.python_version.replace('.', '')}"
    cache = args.wheel_cache or ROOT / ".ci" / ".cache" / "wheels" / tag
    if args.fetch_only:
        try:
            wheels = fetch_wheels(cache, args.platform, args.python_version, args.offline)
        except BuildError as exc:
            print(f"build_zipapp: error: {exc}", file=sys.stderr)
            return 1
        print(f"build_zipapp: {len(wheels)} wheels for {tag} in {cache}")
        return 0
    output = (args.output or default_output(args.platform)).resolve()
    try:
        digest = build(args.platform, args.python_version, output, cache, args.offline,
                       args.python_shebang)
    except BuildError as exc:
        print(f"build_zipapp: error: {exc}", file=sys.stderr)
        return 1
    size = output.stat().st_size
    print(f"{output}  {size / 1e6:.1f} MB  sha256 {digest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
