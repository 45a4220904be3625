"""build_zipapp.py: the pyz it builds runs from another directory with a plain interpreter (no
virtualenv, no checkout on the path), carries every dependency, and is byte-for-byte reproducible.

The build downloads wheels once into .ci/.cache/wheels; with a warm cache it needs no network.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[2]
BUILD = REPO / "build_zipapp.py"
_BUILT: dict[str, Path] = {}


def _builder() -> ModuleType:
    spec = importlib.util.spec_from_file_location("build_zipapp", BUILD)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def base_python() -> str:
    """The interpreter behind the test virtualenv: proves the pyz needs no virtualenv."""
    return os.path.realpath(getattr(sys, "_base_executable", None) or sys.executable)


def clean_env(shiv_root: Path) -> dict[str, str]:
    """The environment of a server: no virtualenv, no checkout on PYTHONPATH, no shiv overrides."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PYTHON", "VIRTUAL_ENV", "SHIV_", "CMDOP_"))}
    env["SHIV_ROOT"] = str(shiv_root)
    return env


def build(out_dir: Path, *args: str) -> Path:
    """Run build_zipapp.py into out_dir (wheel cache shared with CI and developers); by default
    the one pyz for every supported CPython."""
    out = out_dir / "cmdop.pyz"
    r = subprocess.run([sys.executable, str(BUILD), "--output", str(out), *args], cwd=REPO,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr + r.stdout
    return out


def built_pyz(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One build per test session, shared by the zipapp and installer tests."""
    if "pyz" not in _BUILT:
        _BUILT["pyz"] = build(tmp_path_factory.mktemp("dist"))
        _BUILT["shiv_root"] = tmp_path_factory.mktemp("shiv")
    return _BUILT["pyz"]


@pytest.fixture(scope="session")
def pyz(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return built_pyz(tmp_path_factory)


@pytest.fixture(scope="session")
def shiv_root(pyz: Path) -> Path:
    return _BUILT["shiv_root"]


def run_pyz(pyz: Path, shiv_root: Path, *args: str, cwd: Path, python: str | None = None,
            **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([python or base_python(), str(pyz), *args], cwd=cwd,
                          env=dict(clean_env(shiv_root), **env), capture_output=True, text=True,
                          timeout=120)


@pytest.mark.slow
def test_pyz_runs_from_another_directory_without_virtualenv(pyz, shiv_root, tmp_path):
    from cmdop import __version__

    r = run_pyz(pyz, shiv_root, "--version", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"cmdop {__version__}"
    r = run_pyz(pyz, shiv_root, "version", "--json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == {"version": __version__}
    r = run_pyz(pyz, shiv_root, "no-such-command", cwd=tmp_path)
    assert r.returncode == 2 and "usage:" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.slow
def test_an_unpack_cache_that_cannot_be_made_is_one_line(pyz, tmp_path):
    """Found by a black-box pass: SHIV_ROOT naming a file gave a NotADirectoryError traceback."""
    (tmp_path / "afile").write_text("")
    r = run_pyz(pyz, tmp_path / "afile", "version", cwd=tmp_path)
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.startswith("cmdop: error: cannot unpack into ") and "hint: set SHIV_ROOT" in r.stderr


def test_pyz_runs_under_the_distribution_python_too(pyz, shiv_root, tmp_path):
    """Debian's own python3.11 (not the one that built it) runs the same file."""
    other = "/usr/bin/python3.11"
    if not os.path.exists(other) or os.path.realpath(other) == base_python():
        pytest.skip("no second Python 3.11 on this machine")
    r = run_pyz(pyz, shiv_root, "version", "--json", cwd=tmp_path, python=other)
    assert r.returncode == 0, r.stderr


@pytest.mark.slow
def test_pyz_carries_every_dependency(pyz, shiv_root, tmp_path):
    """Each dependency (native ones from manylinux2014 wheels) imports from the pyz's own cache."""
    script = (
        "import importlib, json, sys\n"
        "mods = ['cmdop', 'trio', 'grpc', 'yaml', 'cryptography.hazmat.bindings._rust',\n"
        "        'google.protobuf', 'tree_sitter', 'tree_sitter_bash', 'pyseccomp']\n"
        "out = {m: importlib.import_module(m).__file__ for m in mods}\n"
        "import tree_sitter, tree_sitter_bash\n"
        "lang = tree_sitter.Language(tree_sitter_bash.language())\n"
        "out['parse'] = tree_sitter.Parser(lang).parse(b'ls | sh').root_node.type\n"
        "print(json.dumps(out))\n"
    )
    r = run_pyz(pyz, shiv_root, "-c", script, cwd=tmp_path, SHIV_INTERPRETER="1")
    assert r.returncode == 0, r.stderr
    found = json.loads(r.stdout)
    assert found.pop("parse") == "program"
    for module, path in found.items():
        assert path.startswith(str(shiv_root)), f"{module} came from {path}, not the pyz"


@pytest.mark.slow
def test_pyz_permissions_check(pyz, shiv_root, tmp_path):
    """A real subcommand of the gate, once the gate has one."""
    home = tmp_path / "home"
    home.mkdir()
    env = {"HOME": str(home), "CMDOP_CONFIG_DIR": str(home / "cfg"),
           "CMDOP_STATE_DIR": str(home / "state"), "CMDOP_HOME": str(home / ".cmdop")}
    probe = run_pyz(pyz, shiv_root, "permissions", "check", "--help", cwd=tmp_path, **env)
    if probe.returncode != 0:
        pytest.skip("`cmdop permissions check` does not exist yet")
    r = run_pyz(pyz, shiv_root, "permissions", "check", "--json", "execute_command", "uptime",
                cwd=tmp_path, **env)
    assert r.returncode == 0, r.stderr
    decision = json.loads(r.stdout)
    assert decision["decision"] in ("allow", "ask", "deny")
    r = run_pyz(pyz, shiv_root, "permissions", "check", "--json", "read_file", "/etc/shadow",
                cwd=tmp_path, **env)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["decision"] == "deny"


@pytest.mark.slow
def test_sha256sums_and_layout(pyz):
    sums = (pyz.parent / "SHA256SUMS").read_text().split()
    assert sums == [hashlib.sha256(pyz.read_bytes()).hexdigest(), "cmdop.pyz"]
    assert pyz.read_bytes().startswith(b"#!/usr/bin/env python3\n"   # then what install.sh reads
                                       b"# cmdop-pythons=3.10,3.11,3.12,3.13 cmdop-arch=x86_64\n")
    assert os.access(pyz, os.X_OK)
    with zipfile.ZipFile(pyz) as zf:
        assert zf.comment == b""   # CPython < 3.8 cannot import from a zip with a comment
        infos = zf.infolist()
        names = [i.filename for i in infos]
        assert names == sorted(names)
        assert len({i.date_time for i in infos}) == 1
        assert {(i.external_attr >> 16) & 0o777 for i in infos} <= {0o644, 0o755}
        assert "site-packages/cmdop/cli/main.py" in names
        assert not any(n.endswith(".pyc") or "__pycache__" in n for n in names)
        for tag in ("310", "311", "312", "313"):   # the native modules of each, side by side
            assert f"site-packages/yaml/_yaml.cpython-{tag}-x86_64-linux-gnu.so" in names
        env = json.loads(zf.read("environment.json"))
        assert env["entry_point"] == "cmdop.cli.main:entry"
        assert env["build_id"] in zf.read("__main__.py").decode()


@pytest.mark.slow
def test_build_is_reproducible(tmp_path):
    """Same sources, pins and SOURCE_DATE_EPOCH -> same bytes. Built from a snapshot of the
    sources, so an edit in the working tree between the two builds cannot fake a difference;
    two CPythons (the merge of their wheels included), not four, to keep it quick."""
    import shutil

    snap = tmp_path / "src"
    shutil.copytree(REPO / "cmdop", snap / "cmdop",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for name in ("pyproject.toml", "build_zipapp.py", "README.md"):
        shutil.copy(REPO / name, snap / name)
    cache = REPO / ".ci" / ".cache" / "wheels"
    outs = []
    for n in (1, 2):
        out = tmp_path / f"out{n}" / "cmdop.pyz"
        r = subprocess.run([sys.executable, str(snap / "build_zipapp.py"), "--output", str(out),
                            "--wheel-cache", str(cache), "--python-version", "3.10,3.11"],
                           cwd=tmp_path, capture_output=True,
                           text=True, timeout=300,
                           env=dict(os.environ, SOURCE_DATE_EPOCH="1700000000"))
        assert r.returncode == 0, r.stderr
        outs.append(out)
    if outs[0].read_bytes() != outs[1].read_bytes():
        first, second = _entries(outs[0]), _entries(outs[1])
        differ = sorted(n for n in set(first) | set(second) if first.get(n) != second.get(n))
        pytest.fail(f"two builds differ in {len(differ)} entries: {differ[:10]}")
    with zipfile.ZipFile(outs[0]) as zf:
        assert {i.date_time for i in zf.infolist()} == {(2023, 11, 14, 22, 13, 20)}


def _entries(path: Path) -> dict[str, tuple[int, int, tuple[int, ...]]]:
    with zipfile.ZipFile(path) as zf:
        return {i.filename: (i.CRC, i.external_attr, i.date_time) for i in zf.infolist()}


def test_wheel_selection_rules():
    b = _builder()
    assert b.normalise("Tree_Sitter.Bash") == "tree-sitter-bash"
    x86, arm = "manylinux2014_x86_64", "manylinux2014_aarch64"
    grpc = "grpcio-1.85.1-cp311-cp311-manylinux2014_x86_64.manylinux_2_17_x86_64.whl"
    assert b._wheel_fits(grpc, x86, "3.11")
    assert not b._wheel_fits(grpc, arm, "3.11")
    assert not b._wheel_fits(grpc, x86, "3.12")
    assert b._wheel_fits("protobuf-7.36.2-cp310-abi3-manylinux2014_x86_64.whl", x86, "3.12")
    assert b._wheel_fits("trio-0.35.0-py3-none-any.whl", arm, "3.11")
    assert b.default_output(arm).name == "cmdop-aarch64.pyz"
    assert b.default_output(x86).name == "cmdop.pyz"


def _site(tmp: Path, files: dict[str, bytes]) -> Path:
    for name, body in files.items():
        (tmp / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp / name).write_bytes(body)
    return tmp


@pytest.mark.parametrize("name, a, b, merged", [
    ("m/_x.cpython-310-x86_64-linux-gnu.so", b"A", None, b"A"),         # one version's only
    ("m/__init__.py", b"same", b"same", b"same"),
    ("m/_rust.abi3.so", b"old", b"new", b"old"),                         # abi3: the oldest's
    ("m-1.0.dist-info/RECORD", b"a\nb\n", b"a\nc\n", b"a\nb\nc\n"),    # lines merged
    ("m-1.0.dist-info/WHEEL", b"Tag: cp310\n", b"Tag: cp311\n", b"Tag: cp310\nTag: cp311\n"),
    ("m-1.0.dist-info/sboms/x.json", b"1", b"2", b"1"),                  # metadata: the oldest's
    ("m/__init__.py", b"v1", b"v2", None),                               # pure and different
    ("m/_x.so", b"A", b"B", None),                                       # untagged native
])
def test_merging_the_versions_sites(tmp_path: Path, name: str, a: bytes, b: bytes | None,
                                    merged: bytes | None) -> None:
    builder = _builder()
    sites = {"3.10": _site(tmp_path / "a", {name: a}),
             "3.11": _site(tmp_path / "b", {name: b} if b is not None else {})}
    out = tmp_path / "out"
    out.mkdir()
    if merged is None:
        with pytest.raises(builder.BuildError, match="differs between the CPython 3.10 and 3.11"):
            builder.merge_sites(sites, out)
    else:
        builder.merge_sites(sites, out)
        assert (out / name).read_bytes() == merged


@pytest.mark.parametrize("text, versions", [
    (None, ("3.10", "3.11", "3.12", "3.13")),
    ("all", ("3.10", "3.11", "3.12", "3.13", "3.14")),     # 3.14 only on request
    ("3.12,3.10", ("3.10", "3.12")),
    ("3.11", ("3.11",)),
    ("3.9", None),
    ("3.11,3.15", None),
    ("", None),
])
def test_target_versions(text: str | None, versions: tuple[str, ...] | None) -> None:
    builder = _builder()
    if versions is None:
        with pytest.raises(ValueError, match="is not supported; cmdop runs on CPython 3.10"):
            builder.parse_versions(text)
    else:
        assert builder.parse_versions(text) == versions


def test_pyproject_is_read_without_tomllib_too() -> None:
    """A 3.10 builder has no tomllib: its hand reader finds the same pins as tomllib here."""
    py310 = sorted(Path("/root/.pyenv/versions").glob("3.10.*/bin/python3.10"))
    if not py310:
        pytest.skip("no CPython 3.10 under /root/.pyenv/versions")
    code = ("import importlib.util, json, sys\n"
            "spec = importlib.util.spec_from_file_location('b', sys.argv[1])\n"
            "b = importlib.util.module_from_spec(spec); spec.loader.exec_module(b)\n"
            "print(json.dumps(b.direct_pins()))\n")
    r = subprocess.run([str(py310[-1]), "-I", "-c", code, str(BUILD)], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == _builder().direct_pins()


def test_every_dependency_is_pinned():
    b = _builder()
    pins = b.all_pins()
    assert {"trio", "grpcio", "cryptography", "pyyaml", "tree-sitter", "tree-sitter-bash",
            "pyseccomp"} <= set(pins)
    assert all(v and v[0].isdigit() for v in pins.values())
