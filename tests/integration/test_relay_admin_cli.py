"""`cmdop relay workspace|key|serve` administration through the real CLI, in-process, with
HOME and the CMDOP_* directories redirected into tmp_path (CONTRACT §1, §7)."""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path
from typing import Any

import pytest

from cmdop.relay.store import RelayStore
from tests.integration.inprocess_cli import cli  # noqa: F401  (the fixture)

KEY_RE = re.compile(r"cmdop_[0-9a-f]{12}_[A-Za-z0-9_-]{43}")


def data(tmp_path: Path) -> str:
    return str(tmp_path / "relaydata")


def test_workspace_create_and_list(cli: Any, tmp_path: Path) -> None:
    d = data(tmp_path)
    r = cli("relay", "workspace", "create", "Prod", "--data-dir", d)
    assert r.code == 0 and "created workspace prod" in r.out
    assert stat.S_IMODE(os.stat(d).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(os.path.join(d, "relay.db")).st_mode) == 0o600
    r = cli("relay", "workspace", "create", "prod", "--data-dir", d)
    assert r.code == 1 and "cmdop: error: workspace 'prod' already exists" in r.err and "hint:" in r.err
    r = cli("relay", "workspace", "create", "bad name", "--data-dir", d)
    assert r.code == 2 and "Traceback" not in r.err
    cli("relay", "workspace", "create", "dev", "--data-dir", d)
    r = cli("relay", "workspace", "list", "--json", "--data-dir", d)
    assert r.code == 0 and [w["name"] for w in r.json()] == ["dev", "prod"]
    assert cli("--json", "relay", "workspace", "list", "--data-dir", d).json() == r.json()
    human = cli("relay", "workspace", "list", "--data-dir", d)
    assert "NAME" in human.out and "prod" in human.out


def test_default_data_dir_follows_xdg(cli: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert cli("relay", "workspace", "create", "w").code == 0
    assert (cli.home / ".local" / "share" / "cmdop-relay" / "relay.db").exists()
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert cli("relay", "workspace", "create", "w").code == 0        # another, empty data dir
    assert (tmp_path / "xdg" / "cmdop-relay" / "relay.db").exists()


def test_key_is_shown_once(cli: Any, tmp_path: Path) -> None:
    d = data(tmp_path)
    cli("relay", "workspace", "create", "prod", "--data-dir", d)
    r = cli("relay", "key", "create", "prod", "--name", "alice", "--data-dir", d)
    assert r.code == 0
    key = r.out.strip()
    assert KEY_RE.fullmatch(key)                      # stdout is exactly the key
    assert "will not be shown again" in r.err and key not in r.err
    with RelayStore.open(d) as store:
        assert store.verify_key(key) is not None
    # nowhere else: not in the listings, not in the database file
    for args in (("relay", "key", "list"), ("relay", "key", "list", "--json"),
                 ("relay", "workspace", "list", "--json")):
        out = cli(*args, "--data-dir", d)
        assert key not in out.out + out.err and key[18:] not in out.out
    for name in os.listdir(d):
        assert key.encode() not in Path(d, name).read_bytes()
        assert key[19:].encode() not in Path(d, name).read_bytes()


def test_key_create_json(cli: Any, tmp_path: Path) -> None:
    d = data(tmp_path)
    cli("relay", "workspace", "create", "prod", "--data-dir", d)
    r = cli("relay", "key", "create", "prod", "--name", "ci", "--json", "--data-dir", d)
    obj = r.json()
    assert set(obj) == {"id", "name", "workspace", "key"}
    assert (obj["name"], obj["workspace"]) == ("ci", "prod") and KEY_RE.fullmatch(obj["key"])
    assert obj["key"][6:18] == obj["id"]


def test_key_create_errors(cli: Any, tmp_path: Path) -> None:
    d = data(tmp_path)
    r = cli("relay", "key", "create", "nope", "--name", "x", "--data-dir", d)   # no relay there yet
    assert r.code == 1 and "no relay data in" in r.err and "cmdop relay workspace create" in r.err
    assert not os.path.exists(os.path.join(d, "relay.db"))          # a typo makes no database
    cli("relay", "workspace", "create", "prod", "--data-dir", d)
    r = cli("relay", "key", "create", "nope", "--name", "x", "--data-dir", d)
    assert r.code == 1 and "hint: create it with: cmdop relay workspace create nope" in r.err
    cli("relay", "key", "create", "prod", "--name", "x", "--data-dir", d)
    r = cli("relay", "key", "create", "prod", "--name", "x", "--data-dir", d)
    assert r.code == 1 and "already has a key named 'x'" in r.err
    with pytest.raises(SystemExit) as exc:                # --name is required: argparse usage error
        cli("relay", "key", "create", "prod", "--data-dir", d)
    assert exc.value.code == 2


def test_key_list_masks_and_revoke(cli: Any, tmp_path: Path) -> None:
    d = data(tmp_path)
    cli("relay", "workspace", "create", "prod", "--data-dir", d)
    cli("relay", "workspace", "create", "dev", "--data-dir", d)
    k1 = cli("relay", "key", "create", "prod", "--name", "alice", "--data-dir", d).out.strip()
    k2 = cli("relay", "key", "create", "dev", "--name", "bob", "--data-dir", d).out.strip()
    rows = cli("relay", "key", "list", "--json", "--data-dir", d).json()
    assert [(r["workspace"], r["name"], r["revoked_at"]) for r in rows] == [("dev", "bob", None), ("prod", "alice", None)]
    assert set(rows[0]) == {"id", "workspace", "name", "prefix", "created_at", "revoked_at", "last_used_at"}
    assert rows[1]["prefix"] == k1[6:14]
    human = cli("relay", "key", "list", "--data-dir", d).out
    assert f"cmdop_{k1[6:14]}…" in human and k1[6:18] not in human and "active" in human
    only = cli("relay", "key", "list", "--workspace", "prod", "--json", "--data-dir", d).json()
    assert [r["name"] for r in only] == ["alice"]

    r = cli("relay", "key", "revoke", k1[6:14], "--data-dir", d)
    assert r.code == 0 and "revoked key 'alice'" in r.out
    with RelayStore.open(d) as store:
        assert store.verify_key(k1) is None and store.verify_key(k2) is not None
    r = cli("relay", "key", "revoke", k1[6:18], "--json", "--data-dir", d)
    assert r.code == 0 and r.json()["revoked_at"]
    assert "revoked 20" in cli("relay", "key", "list", "--data-dir", d).out
    r = cli("relay", "key", "revoke", "ffffffffffff", "--data-dir", d)
    assert r.code == 1 and "no key" in r.err and "cmdop relay key list" in r.err


def test_serve_usage_errors(cli: Any, tmp_path: Path) -> None:
    r = cli("relay", "serve", "--tls-cert", str(tmp_path / "c.pem"), "--data-dir", data(tmp_path))
    assert r.code == 2 and "--tls-cert and --tls-key go together" in r.err
    r = cli("relay", "serve", "--listen", "nowhere", "--data-dir", data(tmp_path))
    assert r.code == 2 and "HOST:PORT" in r.err


def test_serve_hands_options_to_the_server(cli: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import cmdop.relay.server as server

    seen: list[Any] = []

    def fake_serve(options: Any) -> int:
        seen.append(options)
        if options.on_ready is not None:
            options.on_ready(server.ServeInfo(address=options.listen, port=7443, fingerprint="ab" * 32,
                                              self_signed=True, cert_path="/x/relay.crt",
                                              data_dir=options.data_dir))
        return 0

    monkeypatch.setattr(server, "serve", fake_serve)
    cert, key = tmp_path / "c.pem", tmp_path / "k.pem"
    r = cli("relay", "serve", "--listen", "[::]:7443", "--data-dir", data(tmp_path),
            "--tls-cert", str(cert), "--tls-key", str(key))
    assert r.code == 0
    (opts,) = seen
    assert (opts.listen, opts.data_dir, opts.tls_cert, opts.tls_key) == (
        "[::]:7443", data(tmp_path), str(cert), str(key))
    assert "ab" * 32 in r.out
    seen.clear()
    r = cli("relay", "serve", "--json")
    assert r.code == 0 and seen[0].listen == "0.0.0.0:7443" and seen[0].tls_cert is None
    assert seen[0].data_dir == str(cli.home / ".local" / "share" / "cmdop-relay")
    assert r.json()["fingerprint"] == "ab" * 32
