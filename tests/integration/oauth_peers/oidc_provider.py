"""Run the real OAuth server of server.js (oidc-provider, pinned in package.json) for a test module,
and play the user's browser against it.

    peer = OidcPeer.start(workdir, relay="relay.example:7443")
    peer.issuer, peer.ca_file, peer.fingerprint
    peer.approve(peer.last_user_code(), account="alice")   # GET /device?user_code, confirm, sign in
    peer.deny(code)                                         # the confirmation page's "abort"
    peer.set_device_ttl(2)
    peer.stop()

JWT access tokens for a resource server (RFC 8707; test_relay_external_oidc.py), optional:

    peer = OidcPeer.start(workdir, resource="https://relay.test/api", token_claims={"workspace": "demo"},
                          keys_file=path, port=port, relay_fingerprint=fp, access_token_alg="RS256")
    peer.set_next_token_claims({"exp": 1, "aud": None})    # the next access token's payload edited

A restart on the same `port` (and workdir: the same certificate) keeps the issuer URL.

`.ci/setup` installs node and runs `npm ci` here; without them the tests that need the peer are
skipped locally and fail under CI (CI=true).
"""

from __future__ import annotations

import http.cookiejar
import json
import os
import shutil
import ssl
import subprocess
import threading
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
SERVER_JS = HERE / "server.js"


def missing_reason() -> str | None:
    """Why the peer cannot run here, or None."""
    if shutil.which("node") is None:
        return "node is not installed (.ci/setup installs it)"
    if not (HERE / "node_modules" / "oidc-provider" / "package.json").exists():
        return f"oidc-provider is not installed: run `npm ci` in {HERE} (.ci/setup does)"
    return None


@dataclass
class _Form:
    action: str
    fields: dict[str, str] = field(default_factory=dict)


class _Forms(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.forms: list[_Form] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "form":
            self.forms.append(_Form(a.get("action", "")))
        elif tag == "input" and self.forms and a.get("name"):
            self.forms[-1].fields[a["name"]] = a.get("value", "")


class OidcPeer:
    def __init__(self, proc: subprocess.Popen[str], issuer: str, ca_file: str, fingerprint: str,
                 log: Path) -> None:
        self.proc = proc
        self.issuer = issuer
        self.ca_file = ca_file
        self.fingerprint = fingerprint
        self.log = log
        self._ctx = ssl.create_default_context(cafile=ca_file)

    @classmethod
    def start(cls, workdir: Path, *, relay: str = "", interval: int = 1, port: int = 0,
              keys_file: str = "", relay_fingerprint: str = "", resource: str = "", audience: str = "",
              access_token_alg: str = "", token_claims: dict[str, Any] | None = None) -> "OidcPeer":
        from cmdop.relay.tls import ensure_certificate

        info = ensure_certificate(str(workdir / "tls"), [])
        log = workdir / "oidc-provider.log"
        env = dict(os.environ, CMDOP_TEST_RELAY=relay, CMDOP_TEST_INTERVAL=str(interval))
        for name, value in (("CMDOP_TEST_PORT", str(port) if port else ""), ("CMDOP_TEST_KEYS", keys_file),
                            ("CMDOP_TEST_RELAY_FINGERPRINT", relay_fingerprint),
                            ("CMDOP_TEST_RESOURCE", resource), ("CMDOP_TEST_AUDIENCE", audience),
                            ("CMDOP_TEST_AT_ALG", access_token_alg),
                            ("CMDOP_TEST_TOKEN_CLAIMS", json.dumps(token_claims) if token_claims else "")):
            if value:
                env[name] = value
            else:
                env.pop(name, None)
        with open(log, "a") as err:
            proc = subprocess.Popen(["node", str(SERVER_JS), info.cert_path, str(workdir / "tls" / "relay.key")],
                                    stdout=subprocess.PIPE, stderr=err, text=True, cwd=HERE, env=env)
        line: list[str] = []
        reader = threading.Thread(target=lambda: line.append(proc.stdout.readline() if proc.stdout else ""),
                                  daemon=True)
        reader.start()
        reader.join(timeout=30)
        if not line or not line[0].strip():
            proc.kill()
            proc.wait()
            raise RuntimeError(f"oidc-provider did not start: {log.read_text()[-2000:]}")
        issuer = json.loads(line[0])["issuer"]
        return cls(proc, issuer, info.cert_path, info.fingerprint, log)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout:
            self.proc.stdout.close()

    # test controls ---------------------------------------------------------------------

    def _open(self, opener: urllib.request.OpenerDirector, url: str,
              form: dict[str, str] | None = None) -> tuple[str, str]:
        data = urllib.parse.urlencode(form).encode() if form is not None else None
        with opener.open(urllib.request.Request(url, data=data), timeout=15) as resp:
            return resp.read().decode(), resp.geturl()

    def _plain(self) -> urllib.request.OpenerDirector:
        return urllib.request.build_opener(urllib.request.HTTPSHandler(context=self._ctx))

    def last_user_code(self) -> str:
        body, _ = self._open(self._plain(), self.issuer + "/__test__/last-user-code")
        code: str = json.loads(body)["user_code"]
        return code

    def set_device_ttl(self, seconds: int) -> None:
        self._open(self._plain(), f"{self.issuer}/__test__/device-ttl?seconds={seconds}", {})

    def set_next_token_claims(self, claims: dict[str, Any]) -> None:
        """The next JWT access token's payload gets these claims (None: the claim removed)."""
        self._open(self._plain(), self.issuer + "/__test__/next-token-claims", {"claims": json.dumps(claims)})

    @property
    def port(self) -> int:
        return int(urllib.parse.urlsplit(self.issuer).port or 443)

    # the user's browser ----------------------------------------------------------------

    def _browser(self) -> urllib.request.OpenerDirector:
        return urllib.request.build_opener(urllib.request.HTTPSHandler(context=self._ctx),
                                           urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))

    @staticmethod
    def _forms(body: str) -> list[_Form]:
        parser = _Forms()
        parser.feed(body)
        return parser.forms

    def _confirm_page(self, browser: urllib.request.OpenerDirector, user_code: str) -> tuple[_Form, str]:
        """Open verification_uri_complete (oidc-provider answers with a self-submitting form),
        submit it, and return the confirmation form."""
        body, url = self._open(browser, f"{self.issuer}/device?user_code={urllib.parse.quote(user_code)}")
        form = self._forms(body)[0]
        body, url = self._open(browser, urllib.parse.urljoin(url, form.action), form.fields)
        forms = self._forms(body)
        assert forms and "confirm" in forms[0].fields, body[-500:]
        return forms[0], url

    def approve(self, user_code: str, account: str = "alice") -> None:
        browser = self._browser()
        form, url = self._confirm_page(browser, user_code)
        body, url = self._open(browser, urllib.parse.urljoin(url, form.action), form.fields)
        login = self._forms(body)[0]                       # our sign-in page (server.js)
        body, url = self._open(browser, urllib.parse.urljoin(url, login.action),
                               {"account": account, "approve": "yes"})
        assert "Sign-in Success" in body, body[-500:]

    def deny(self, user_code: str) -> None:
        browser = self._browser()
        form, url = self._confirm_page(browser, user_code)
        fields = {k: v for k, v in form.fields.items() if k != "confirm"}
        fields["abort"] = "yes"
        self._open(browser, urllib.parse.urljoin(url, form.action), fields)


def read_json(path: Path) -> Any:
    return json.loads(path.read_text())
