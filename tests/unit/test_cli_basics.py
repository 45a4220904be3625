"""The CLI frame as a user meets it: version, usage errors, exit codes, no tracebacks."""

from __future__ import annotations

import json

from cmdop import __version__


def test_version_flag_and_command(cmdop_env):
    r = cmdop_env.run("--version")
    assert r.returncode == 0 and r.stdout.strip() == f"cmdop {__version__}"
    r = cmdop_env.run("version")
    assert r.returncode == 0 and __version__ in r.stdout
    r = cmdop_env.run("version", "--json")
    assert json.loads(r.stdout) == {"version": __version__}
    r = cmdop_env.run("--json", "version")
    assert json.loads(r.stdout) == {"version": __version__}


def test_unknown_command_is_usage_error_without_traceback(cmdop_env):
    r = cmdop_env.run("frobnicate")
    assert r.returncode == 2
    assert "usage:" in r.stderr and "Traceback" not in r.stderr


def test_unknown_flag_is_usage_error(cmdop_env):
    r = cmdop_env.run("version", "--no-such-flag")
    assert r.returncode == 2 and "Traceback" not in r.stderr


def test_no_command_is_usage_error(cmdop_env):
    r = cmdop_env.run()
    assert r.returncode == 2 and "usage:" in r.stderr


def test_group_without_subcommand_is_usage_error(cmdop_env):
    r = cmdop_env.run("permissions")
    assert r.returncode == 2 and "Traceback" not in r.stderr


HEAVY = ("trio", "grpc", "yaml", "cryptography", "tree_sitter", "tree_sitter_bash", "pyseccomp",
         "google.protobuf")


def test_parser_and_version_import_nothing_heavy(cmdop_env):
    """`cmdop --version` is timed (bench/startup.py): building the whole argparse tree and
    answering --version must not load the heavy dependencies."""
    import subprocess
    import sys

    probe = (
        "import sys, json\n"
        "from cmdop.cli import main\n"
        "main.build_parser()\n"
        "try:\n"
        "    main.main(['--version'])\n"
        "except SystemExit:\n"
        "    pass\n"
        f"heavy = {HEAVY!r}\n"
        "print(json.dumps(sorted(m for m in sys.modules\n"
        "                        if any(m == h or m.startswith(h + '.') for h in heavy))))\n"
    )
    r = subprocess.run([sys.executable, "-c", probe], env=cmdop_env.env, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    loaded = json.loads(r.stdout.strip().splitlines()[-1])
    assert loaded == [], f"importing the CLI loaded heavy modules: {loaded}"


def test_python_m_and_agent_py_behave_alike(cmdop_env):
    import subprocess
    import sys
    from pathlib import Path

    agent = Path(__file__).resolve().parents[2] / "agent.py"
    r = subprocess.run([sys.executable, str(agent), "version", "--json"], env=cmdop_env.env,
                       capture_output=True, text=True, timeout=60, cwd=cmdop_env.home)
    assert r.returncode == 0 and json.loads(r.stdout) == {"version": __version__}
    r = subprocess.run([sys.executable, str(agent), "frobnicate"], env=cmdop_env.env,
                       capture_output=True, text=True, timeout=60, cwd=cmdop_env.home)
    assert r.returncode == 2 and "Traceback" not in r.stderr
