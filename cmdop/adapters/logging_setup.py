"""Structured logs on stderr (journald picks them up), as text or one JSON object per line.

`configure(level, fmt)` installs one handler on the `cmdop` logger. Extra fields given with
`log.info("msg", extra={"fields": {...}})` appear as JSON keys, or as `k=v` in text mode.
Messages are single-line: newlines and other control characters in interpolated values are
escaped so a caller cannot forge log lines.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any, TextIO

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
           "error": logging.ERROR}


def _one_line(text: str) -> str:
    return "".join(c if c.isprintable() or c == " " else repr(c)[1:-1] for c in text)


class JsonFormatter(logging.Formatter):
    """`{"ts", "level", "logger", "msg", ...fields, "exc"?}` per line."""

    def format(self, record: logging.LogRecord) -> str:
        obj: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            for k, v in fields.items():
                obj.setdefault(str(k), v)
        if record.exc_info:
            obj["exc"] = self.formatException(record.exc_info)
        return json.dumps(obj, ensure_ascii=False, default=str)


class TextFormatter(logging.Formatter):
    """`TIME LEVEL logger: msg k=v ...` on one line (tracebacks follow, indented)."""

    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        line = f"{ts}Z {record.levelname.lower():7} {record.name}: {_one_line(record.getMessage())}"
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            line += "".join(f" {k}={_one_line(str(v))}" for k, v in fields.items())
        if record.exc_info:
            line += "\n" + "\n".join("    " + x for x in self.formatException(record.exc_info).splitlines())
        return line


def configure(level: str = "info", fmt: str = "text", stream: TextIO | None = None) -> None:
    """Send `cmdop.*` logs at `level` and above to `stream` (stderr) in `fmt` (text|json)."""
    logger = logging.getLogger("cmdop")
    for h in list(logger.handlers):
        logger.removeHandler(h)
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    logger.addHandler(handler)
    logger.setLevel(_LEVELS.get(level, logging.INFO))
    logger.propagate = False
