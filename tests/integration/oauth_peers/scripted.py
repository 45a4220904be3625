"""A scripted OAuth server for tests: stdlib http.server over TLS in a thread.

Each path answers from a script: a list of `Reply`s consumed in order, the last one repeated.
A `Reply` can be a JSON object, raw bytes (malformed JSON, an oversized body), or `drop=True`
(the connection is closed without an answer: a network error for the client). Every request is
recorded (method, path, form fields) so a test can check what the client sent.

    server = ScriptedServer(cert_file, key_file)          # serves the metadata at once
    server.script("/token", [Reply(400, {"error": "authorization_pending"}), Reply(200, {...})])
    ... server.url, server.requests ...
    server.close()
"""

from __future__ import annotations

import json
import ssl
import threading
import urllib.parse
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Reply:
    status: int = 200
    body: Any = None                 # dict/list → JSON; bytes → sent as they are
    drop: bool = False               # close the connection without answering
    headers: dict[str, str] = field(default_factory=dict)
    content_length: bool = True      # False: no Content-Length, the body ends with the connection


@dataclass
class Request:
    method: str
    path: str
    form: dict[str, str]


class ScriptedServer:
    def __init__(self, cert_file: str, key_file: str, *, metadata: dict[str, Any] | None = None,
                 issuer_path: str = "", discovery: str = "rfc8414") -> None:
        self._lock = threading.Lock()
        self._scripts: dict[str, list[Reply]] = {}
        self.requests: list[Request] = []
        handler = self._handler_class()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._httpd.daemon_threads = True
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(cert_file, key_file)
        self._httpd.socket = ctx.wrap_socket(self._httpd.socket, server_side=True)
        self.port = self._httpd.server_address[1]
        self.url = f"https://127.0.0.1:{self.port}{issuer_path}"
        self.prefix = issuer_path
        meta = {
            "issuer": self.url,
            "device_authorization_endpoint": self.url + "/device",
            "token_endpoint": self.url + "/token",
            "revocation_endpoint": self.url + "/revoke",
            "grant_types_supported": ["urn:ietf:params:oauth:grant-type:device_code", "refresh_token"],
        }
        if metadata is not None:
            meta.update(metadata)
            meta = {k: v for k, v in meta.items() if v is not None}
        if discovery == "rfc8414":     # RFC 8414 §3: the issuer's path after the well-known prefix
            self.script("/.well-known/oauth-authorization-server" + issuer_path, [Reply(200, meta)])
        else:                          # OpenID Connect Discovery §4: appended to the issuer
            self.script(issuer_path + "/.well-known/openid-configuration", [Reply(200, meta)])
        self.script(issuer_path + "/revoke", [Reply(200, {})])
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)
        self._thread.start()

    def script(self, path: str, replies: list[Reply]) -> None:
        """Script `path` (relative to the issuer: "/token" is ISSUER_PATH/token)."""
        if not path.startswith(("/.well-known", self.prefix + "/")):
            path = self.prefix + path
        with self._lock:
            self._scripts[path] = list(replies)

    def device_ok(self, *, interval: int | None = 5, expires_in: int = 600, user_code: str = "WDJB-MJHT") -> Reply:
        body: dict[str, Any] = {
            "device_code": "dev-code-secret-0123456789", "user_code": user_code,
            "verification_uri": self.url + "/activate",
            "verification_uri_complete": self.url + "/activate?user_code=" + user_code,
            "expires_in": expires_in,
        }
        if interval is not None:
            body["interval"] = interval
        reply = Reply(200, body)
        self.script("/device", [reply])
        return reply

    def form_requests(self, path: str) -> list[dict[str, str]]:
        """The forms POSTed to `path` (relative to the issuer, as in `script`)."""
        with self._lock:
            return [r.form for r in self.requests if r.path == self.prefix + path]

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    def _next(self, path: str) -> Reply:
        with self._lock:
            script = self._scripts.get(path)
            if not script:
                return Reply(404, {"error": "not_found"})
            return script.pop(0) if len(script) > 1 else script[0]

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length).decode() if length else ""
                form = dict(urllib.parse.parse_qsl(raw))
                path = urllib.parse.urlsplit(self.path).path
                with server._lock:
                    server.requests.append(Request(self.command, path, form))
                reply = server._next(path)
                if reply.drop:
                    self.close_connection = True
                    self.connection.close()
                    return
                body = reply.body if isinstance(reply.body, bytes) else json.dumps(reply.body).encode()
                self.send_response(reply.status)
                self.send_header("Content-Type", "application/json")
                for k, v in reply.headers.items():
                    self.send_header(k, v)
                if reply.content_length:
                    self.send_header("Content-Length", str(len(body)))
                else:
                    self.send_header("Connection", "close")
                    self.close_connection = True
                self.end_headers()
                try:
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError, ssl.SSLError):
                    pass

            do_GET = _serve
            do_POST = _serve

        return Handler
