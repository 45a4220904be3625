"""config.yaml (in the config dir): the agent's settings that are not the permission policy.

The file, every key optional:
    sandbox_required: true   # without seccomp, remote and self callers' commands are refused
    relay: "host:port"       # relay address (CMDOP_RELAY overrides it)
    call_pids_max: 1024      # processes and threads one command may have at once (cgroup pids.max)
    call_memory_max: "50%"   # memory one command may use: bytes, 512M, 2G, or a share of RAM
    remote_requires_password: false  # true: remote callers unlock first (`cmdop password unlock HOST`)
    password_session_ttl: "15m"      # how long an unlock lasts: seconds, or "90s", "15m", "2h" (1 s–24 h)
    e2e_required: true       # relay calls must be end-to-end encrypted; plaintext ones are refused
    authorized_callers: []   # caller keys (`cmdop connect key show-public`) a relay call must be
                             # signed by; empty: any caller the relay authenticated

Rules:
- A missing file means the defaults (`AgentConfig()`); an empty file too.
- Unknown keys, wrong types and bad YAML are errors (ConfigFileError naming the line), never
  warnings: a typo in `sandbox_required` must not silently keep or drop the sandbox.
- A file writable by group/others, or owned by someone other than us or root, is refused like
  permissions.yaml: whoever can write it can turn the sandbox requirement off.
"""

from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass
from typing import Any

import yaml

from cmdop.core.errors import ConfigFileError

KEYS = ("sandbox_required", "relay", "call_pids_max", "call_memory_max", "remote_requires_password",
        "password_session_ttl", "e2e_required", "authorized_callers")


@dataclass(frozen=True)
class AgentConfig:
    """The validated contents of config.yaml; every field has its documented default."""

    sandbox_required: bool = True
    relay: str | None = None
    call_pids_max: int = 1024
    call_memory_max: str = "50%"
    remote_requires_password: bool = False
    password_session_ttl: int = 15 * 60      # seconds
    e2e_required: bool = True
    authorized_callers: tuple[str, ...] = ()  # "ed25519:BASE64" entries, validated


def _line(node: yaml.Node) -> int:
    return int(node.start_mark.line) + 1


def parse_text(text: str) -> AgentConfig:
    """Validate config.yaml's text; ConfigFileError naming the line on any problem."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigFileError(f"not valid YAML: {problem}",
                              line=mark.line + 1 if mark else None) from None
    if root is None:
        return AgentConfig()
    if not isinstance(root, yaml.MappingNode):
        raise ConfigFileError("config.yaml must be a mapping of keys to values", line=_line(root))
    values: dict[str, Any] = {}
    for knode, vnode in root.value:
        key = yaml.safe_load(yaml.serialize(knode)) if isinstance(knode, yaml.ScalarNode) else None
        if key not in KEYS:
            raise ConfigFileError(f"unknown key {key!r} in config.yaml (allowed: {', '.join(KEYS)})",
                                  line=_line(knode))
        if key in values:
            raise ConfigFileError(f"duplicate key {key!r} in config.yaml", line=_line(knode))
        if key == "authorized_callers":
            values[key] = _authorized_callers(vnode)
            continue
        if not isinstance(vnode, yaml.ScalarNode):
            raise ConfigFileError(f"{key} must be a single value", line=_line(vnode))
        value = yaml.safe_load(yaml.serialize(vnode))
        if key == "e2e_required" and not isinstance(value, bool):
            raise ConfigFileError("e2e_required must be true or false", line=_line(vnode))
        if key == "sandbox_required" and not isinstance(value, bool):
            raise ConfigFileError("sandbox_required must be true or false", line=_line(vnode))
        if key == "relay" and value is not None and not (isinstance(value, str) and value):
            raise ConfigFileError("relay must be a host:port string", line=_line(vnode))
        if key == "call_pids_max" and (isinstance(value, bool) or not isinstance(value, int)
                                       or not 16 <= value <= 4_194_304):
            raise ConfigFileError("call_pids_max must be a whole number from 16 to 4194304",
                                  line=_line(vnode))
        if key == "call_memory_max":
            if isinstance(value, bool) or not isinstance(value, (int, str)):
                raise ConfigFileError('call_memory_max must be a size such as 512M, 2G or "50%"',
                                      line=_line(vnode))
            value = str(value)
            if not _SIZE.match(value):
                raise ConfigFileError(f"call_memory_max: {value!r} is not a size such as 512M, "
                                      '2G or "50%"', line=_line(vnode))
        if key == "remote_requires_password" and not isinstance(value, bool):
            raise ConfigFileError("remote_requires_password must be true or false", line=_line(vnode))
        if key == "password_session_ttl":
            from cmdop.core.password_policy import parse_ttl

            seconds = parse_ttl(value)
            if seconds is None:
                raise ConfigFileError(f"password_session_ttl: {value!r} is not a duration such as "
                                      '900, "90s", "15m" or "2h" (1 s to 24 h)', line=_line(vnode))
            value = seconds
        values[key] = value
    return AgentConfig(**values)


def _authorized_callers(node: yaml.Node) -> tuple[str, ...]:
    """A list of `ed25519:BASE64` caller keys; ConfigFileError naming the line otherwise."""
    from cmdop.adapters.e2e_files import parse_caller_public
    from cmdop.core.errors import E2EError

    if not isinstance(node, yaml.SequenceNode):
        raise ConfigFileError("authorized_callers must be a list of caller keys", line=_line(node))
    out = []
    for item in node.value:
        value = yaml.safe_load(yaml.serialize(item)) if isinstance(item, yaml.ScalarNode) else None
        try:
            parse_caller_public(value if isinstance(value, str) else "")
        except E2EError:
            raise ConfigFileError("authorized_callers: each entry is a key from `cmdop connect "
                                  "key show-public` (ed25519:BASE64)", line=_line(item)) from None
        out.append(str(value).strip())
    return tuple(out)


_SIZE = re.compile(r"^(?:[1-9][0-9]*[KMGT]?|(?:100|[1-9][0-9]?)%)$")


def load(path: str) -> AgentConfig:
    """config.yaml at `path`: the defaults when it does not exist. Raises ConfigFileError."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)  # a FIFO must not hang us
    except FileNotFoundError:
        return AgentConfig()
    except OSError as exc:
        raise ConfigFileError(f"cannot read {path}: {exc.strerror}") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise ConfigFileError(f"{path} is not a regular file; refusing it",
                              hint=f"move {path} away: the agent's settings are a YAML file there")
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        uid = os.geteuid()
        if st.st_uid not in (uid, 0):
            raise ConfigFileError(f"{path} is owned by uid {st.st_uid}, not you; refusing it",
                                  hint=f"run: chown {uid} {path}")
        if stat.S_IMODE(st.st_mode) & 0o022:
            raise ConfigFileError(f"{path} is writable by other users; refusing it",
                                  hint=f"run: chmod 600 {path}")
        data = f.read()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigFileError(f"{path} is not UTF-8 text") from None
    try:
        return parse_text(text)
    except ConfigFileError as exc:
        raise ConfigFileError(f"{path}: {exc.message}", exc.hint) from None
