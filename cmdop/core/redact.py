"""Redaction of secrets in text that goes to the audit log.

Pure: `redact(text)` returns the text with every secret substring replaced and whether anything
was replaced. Only the secret part is replaced, never the words around it, so an audit line still
says which program ran with which options. A replacement is `[REDACTED]`, after at most the first
4 characters of a well-known token prefix (`AKIA[REDACTED]`, `ghp_[REDACTED]`) so a reader can tell
which kind of credential was passed without learning it.

Rules, applied in this order (each entry says where the shape comes from):
1. PEM private-key blocks (RFC 7468 `-----BEGIN ... PRIVATE KEY-----`), to the END line or the end
   of the text when the block is cut off.
2. URL credentials `scheme://user:PASSWORD@host` (RFC 3986 userinfo); the user name is kept.
3. HTTP auth: `Authorization: Bearer|Basic|Token X`, `Bearer X`, and API-key style headers
   (`X-Api-Key: X`, `Private-Token: X`, anything `X-…token|key|secret|auth…: X`).
4. Command-line passwords: `--password=X`, `--password X` and the same for names containing
   password, passwd, passphrase, token, secret, api-key, access-key, private-key, credential
   (but not `…-file`, `…-path`, `…-id`: those name where a secret is, not the secret);
   `mysql`/`mariadb` family `-pX` (attached form only: `-p` alone makes them prompt);
   `sshpass -p X`; `redis-cli -a X`; `curl -u user:X`; Samba's `-U user%X`.
5. `NAME=value`, `NAME: value`, `NAME = value` and JSON `"name": "value"` where NAME has a part containing TOKEN, SECRET,
   PASSWORD, PASSWD, PASSPHRASE, CREDENTIAL, or a part that is or ends with KEY/KEYS
   (API_KEY, APIKEY, AWS_SECRET_ACCESS_KEY), or a part that is PWD or PASS (MYSQL_PWD, DB_PASS),
   case-insensitive. PWD/OLDPWD (the working directory), BYPASS_*, KEYBOARD-like names are not.
6. Well-known token formats: AWS access key ids (AKIA/ASIA/…), GitHub (ghp_ gho_ ghu_ ghs_ ghr_,
   github_pat_), GitLab (glpat-), Slack (xox?-), Stripe (sk_live_/rk_live_/sk_test_), OpenAI and
   Anthropic style `sk-…`, Google API keys (AIza…), npm (npm_), JSON Web Tokens (eyJ….eyJ….…),
   cmdop's own share tokens (`cmdop_share_` kept whole, so a reader sees a guest token was passed).
7. Long high-entropy strings: a run of ≥ 32 characters of the base64/base64url alphabet that mixes
   upper case, lower case and at least 2 digits, with Shannon entropy ≥ 4.0 bits per character.
   Pure hex (git SHAs, sha256 digests), UUIDs, paths and identifiers do not qualify: they are the
   everyday content of commands and are not credentials on their own.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from typing import Callable

MARK = "[REDACTED]"

_Repl = Callable[["re.Match[str]"], str]


def _keep_group(keep: int) -> _Repl:
    """Replace the last group of the match, keeping groups 1..keep as they were."""

    def repl(m: "re.Match[str]") -> str:
        prefix = "".join(m.group(i) or "" for i in range(1, keep + 1))
        return prefix + MARK

    return repl


def _keep_prefix(n: int) -> _Repl:
    def repl(m: "re.Match[str]") -> str:
        return m.group(0)[:n] + MARK

    return repl


_SECRET_WORD = r"(?:password|passwd|passphrase|token|secret|api[-_]?key|access[-_]?key|private[-_]?key|credentials?)"
# One shell word: $'…' (backslash escapes), or a run of unquoted characters, "…" (backslash
# escapes) and '…' — so `KEY="a\"b c"` and `--password=$'two words'` are taken whole.
_VALUE = (r"(?:\$'(?:[^'\\]|\\.)*'|(?:[^\s;&|\"'\\]|\\.|\"(?:[^\"\\]|\\.)*\"|'[^']*')+)")

# Each rule: (a substring of the lower-cased text without which the rule cannot match, so most
# rules are skipped by a fast `in` test; the pattern; the replacement).
_RULES: list[tuple[str | None, re.Pattern[str], _Repl]] = [
    # 1. PEM private keys (RFC 7468), possibly cut off.
    ("private key", re.compile(r"(-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----)[\s\S]*?(-----END [A-Z0-9 ]*PRIVATE KEY-----|$)"),
     lambda m: m.group(1) + MARK + m.group(2)),
    # 2. URL userinfo password (RFC 3986).
    ("://", re.compile(r"(\b[a-zA-Z][a-zA-Z0-9+.-]{0,20}://[^\s/:@]{1,256}:)([^\s/@]{1,256})(?=@)"), _keep_group(1)),
    # 3. HTTP authorization and API-key headers.
    ("authorization", re.compile(r"(?i)(\bauthorization\s*:\s*(?:(?:bearer|basic|token|digest)\s+)?)([^\s'\"]+)"), _keep_group(1)),
    ("bearer", re.compile(r"(?i)(\bbearer\s+)([A-Za-z0-9\-._~+/]{8,}=*)"), _keep_group(1)),
    (":", re.compile(r"(?i)(\b(?:x-[\w-]{0,40}?(?:token|key|secret|auth)[\w-]{0,40}|api-key|private-token)\s*:\s*)([^\s'\"]+)"),
     _keep_group(1)),
    # 4. Command-line password options.
    ("--", re.compile(r"(?i)((?<![\w-])--[\w-]{0,40}?" + _SECRET_WORD
                + r"(?![\w-]{0,40}?(?:-file|-path|-id|-env|-name|-dir)\b)[\w-]{0,40}"
                r"(?:=|\s+(?!-)))(" + _VALUE + r")"), _keep_group(1)),
    ("-p", re.compile(r"(\b(?:mysql\w{0,20}|mariadb[\w-]{0,20})\b[^;&|\n]{0,1000}?\s-p)([^\s;&|]+)"), _keep_group(1)),
    ("sshpass", re.compile(r"(\bsshpass\b[^;&|\n]{0,1000}?\s-p\s*)([^\s;&|]+)"), _keep_group(1)),
    ("redis-cli", re.compile(r"(\bredis-cli\b[^;&|\n]{0,1000}?\s-a\s+)([^\s;&|]+)"), _keep_group(1)),
    ("docker", re.compile(r"(\b(?:docker|podman|nerdctl|buildah|skopeo|helm)\b[^;&|\n]{0,200}?\blogin\b[^;&|\n]{0,500}?\s-p\s*)("
                          + _VALUE + r")"), _keep_group(1)),
    ("pass", re.compile(r"(?i)(\s-(?:pass|passin|passout|password|k|kfile)?\s+(?:pass|env):)(" + _VALUE + r")"), _keep_group(1)),
    ("openssl", re.compile(r"(\bopenssl\b[^;&|\n]{0,500}?\s-k\s+)(" + _VALUE + r")"), _keep_group(1)),
    ("htpasswd", re.compile(r"(\bhtpasswd\b(?:\s+-\w+)*\s+-\w*b\w*(?:\s+-\w+)*\s+\S+\s+\S+\s+)(" + _VALUE + r")"),
     _keep_group(1)),
    ("cookie", re.compile(r"(?i)(\bcookie\s*:\s*)([^'\"\n]+)"), _keep_group(1)),
    ("sudo", re.compile(r"(\b(?:echo|printf)\s+(?:-\w+\s+)*)(" + _VALUE + r")(?=\s*\|\s*sudo\b[^;&|\n]*\s-\w*S)"),
     _keep_group(1)),
    ("curl", re.compile(r"(\bcurl\b[^;&|\n]{0,1000}?\s(?:-u\s*|--user[=\s]+)['\"]?[^\s:'\"]+:)([^\s'\"@]+)"), _keep_group(1)),
    # Samba's user%password (smbclient, rpcclient, smbmap, smbget, net, smbcacls).
    ("%", re.compile(r"(\b(?:smbclient|rpcclient|smbmap|smbget|smbcacls|net)\b[^;&|\n]{0,500}?\s"
                     r"(?:-U\s*|--user(?:name)?[=\s]+)['\"]?[^\s%'\"]+%)([^\s'\"]+)"), _keep_group(1)),
    # 5. NAME=value and "name": "value" with a secret-looking name.
    ("=", re.compile(r"(?i)(\b[A-Za-z0-9_]{0,64}?(?:token|secret|passw(?:or)?d|passphrase|credential|key|keys|pwd|pass|auth)"
                r"(?:_[A-Za-z0-9_]{0,64})?=)(" + _VALUE + r")"), lambda m: _name_value(m)),
    # ... and `NAME: value`, `NAME = value` (YAML, INI, a line echoed into a file).
    (None, re.compile(r"(?i)(\b[A-Za-z0-9_-]{0,64}?(?:token|secret|passw(?:or)?d|passphrase|credential|key|keys|pwd|"
                      r"pass|auth)(?:[_-][A-Za-z0-9_-]{0,64})?(?:[ \t]*:[ \t]*|[ \t]+=[ \t]*|=[ \t]+)(?![=:]))"
                      r"(" + _VALUE + r")"), lambda m: _name_value(m)),
    ('":', re.compile(r"(?i)(\"[\w-]{0,64}?(?:token|secret|passw(?:or)?d|passphrase|credential|api[-_]?key|private[-_]?key)"
                r"[\w-]{0,64}\"\s*:\s*\")((?:[^\"\\]|\\.)*)(?=\")"), _keep_group(1)),
    # 6. Well-known token formats (vendor documentation of each prefix).
    (None, re.compile(r"\b(?:AKIA|ASIA|AGPA|AIDA|AROA|ANPA|ANVA|AIPA)[A-Z0-9]{16}\b"), _keep_prefix(4)),
    ("gh", re.compile(r"\bgh[pousr]_[A-Za-z0-9]{30,}\b"), _keep_prefix(4)),
    ("github_pat_", re.compile(r"\bgithub_pat_[A-Za-z0-9_]{20,}"), _keep_prefix(4)),
    ("glpat-", re.compile(r"\bglpat-[A-Za-z0-9_-]{20,}"), _keep_prefix(4)),
    ("xox", re.compile(r"\bxox[abposr]-[A-Za-z0-9-]{10,}"), _keep_prefix(4)),
    ("k_", re.compile(r"\b(?:sk|rk)_(?:live|test)_[A-Za-z0-9]{16,}"), _keep_prefix(3)),
    ("sk-", re.compile(r"\bsk-[A-Za-z0-9_-]{20,}"), _keep_prefix(3)),
    ("aiza", re.compile(r"\bAIza[0-9A-Za-z_-]{35}"), _keep_prefix(4)),
    ("npm_", re.compile(r"\bnpm_[A-Za-z0-9]{36}"), _keep_prefix(4)),
    ("cmdop_share_", re.compile(r"\bcmdop_share_[A-Za-z0-9_-]{8,}"), _keep_prefix(12)),
    ("eyj", re.compile(r"\beyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]*"), _keep_prefix(3)),
]

# A name part that is exactly, or ends with, KEY/KEYS counts; KEYBOARD, KEYMAP do not.
# PWD and PASS count only as a whole part (MYSQL_PWD, DB_PASS), and the shell's own PWD/OLDPWD
# (the working directory) are not secrets.
_SECRET_PART = re.compile(r"(?i)token|secret|passw(?:or)?d|passphrase|credential|key$|keys$|^pwd$|^pass$|^auth$")
_NOT_SECRET_NAMES = {"PWD", "OLDPWD"}

_HIGH_ENTROPY = re.compile(r"[A-Za-z0-9+/=_-]{32,}")
_PEM_ARMOUR = re.compile(r"(-----(?:BEGIN|END) [A-Z0-9 ]{0,40}-----)")


def _name_value(m: "re.Match[str]") -> str:
    name = m.group(1).rstrip(" \t:=")
    if name.upper() in _NOT_SECRET_NAMES:
        return m.group(0)
    if any(_SECRET_PART.search(part) for part in re.split(r"[_-]", name) if part):
        return m.group(1) + MARK
    return m.group(0)


def _entropy(s: str) -> float:
    n = len(s)
    return -sum(c / n * math.log2(c / n) for c in Counter(s).values())


def _looks_random(s: str) -> bool:
    digits = sum(ch.isdigit() for ch in s)
    return (digits >= 2 and any(ch.islower() for ch in s) and any(ch.isupper() for ch in s)
            and _entropy(s) >= 4.0)


def _high_entropy(m: "re.Match[str]") -> str:
    run = m.group(0)
    parts = run.split("/")
    # base64 may contain "/", paths do too: a run is one token only when no part of it reads like
    # a path word (every part has an upper-case letter or a digit), e.g. "wJalr/K7MDENG/bPxRfi".
    if _looks_random(run) and all(any(c.isupper() or c.isdigit() for c in p) for p in parts):
        return MARK
    # A path-like run: judge each part on its own, so /api/v1/<token> loses only the token.
    return "/".join(MARK if len(p) >= 32 and _looks_random(p) else p for p in parts)


def redact(text: str) -> tuple[str, bool]:
    """Return `text` with secret substrings replaced by `[REDACTED]`, and whether any were.

    Never raises; never removes anything but secret values (see the module docstring for the
    rules). Idempotent: redacting the result again changes nothing.
    """
    out = text
    lower = text.lower()
    for needle, pattern, repl in _RULES:
        if needle is None or needle in lower:
            out = pattern.sub(repl, out)
    if len(out) >= 32:
        # PEM armour lines stay intact (their dashes are in the base64url alphabet).
        parts = _PEM_ARMOUR.split(out)
        parts[::2] = [_HIGH_ENTROPY.sub(_high_entropy, p) for p in parts[::2]]
        out = "".join(parts)
    return out, out != text
