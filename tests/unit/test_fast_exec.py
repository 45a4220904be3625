"""`cmdop exec`'s lean path takes exactly the shapes it understands and leaves the rest to the
full CLI (None), so the two paths can only differ in speed."""

from __future__ import annotations

import pytest

from cmdop.cli.fast_exec import parse


@pytest.mark.parametrize("argv, expected", [
    (["web01", "--", "uptime"], ("web01", ["uptime"], 600.0, "")),
    (["web01", "uptime", "-a"], ("web01", ["uptime", "-a"], 600.0, "")),
    (["--timeout", "5", "web01", "--", "ls", "-l"], ("web01", ["ls", "-l"], 5.0, "")),
    (["--timeout=5", "--cwd=/srv", "web01", "--", "ls"], ("web01", ["ls"], 5.0, "/srv")),
    (["--cwd", "/srv", "web01", "--", "--weird"], ("web01", ["--weird"], 600.0, "/srv")),
    (["web01", "--", "sh", "-c", "exit 3"], ("web01", ["sh", "-c", "exit 3"], 600.0, "")),
])
def test_shapes_it_serves(argv, expected):
    assert parse(argv) == expected


@pytest.mark.parametrize("argv", [
    [], ["web01"], ["web01", "--"],                      # no command: the full CLI's usage error
    ["--json", "web01", "--", "true"],                   # options it does not know
    ["--api-key", "k", "web01", "--", "true"], ["--relay", "h:1", "web01", "--", "true"],
    ["--workspace", "w", "web01", "--", "true"], ["--help"],
    ["--timeout", "0", "web01", "--", "true"], ["--timeout", "601", "web01", "--", "true"],
    ["--timeout", "x", "web01", "--", "true"], ["--timeout"],
    ["", "--", "true"], ["  ", "--", "true"],            # an empty HOST: the full CLI's usage error
    ["web01", "--", ""], ["web01", "--", " \t"], ["web01", ""],   # an empty command: likewise
])
def test_everything_else_goes_to_the_full_cli(argv):
    assert parse(argv) is None
