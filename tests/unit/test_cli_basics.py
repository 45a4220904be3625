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
