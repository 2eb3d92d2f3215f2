"""One line per event, machine-parsable: `key=value` pairs (LOG_FORMAT=text) or JSON.

Callers log an event name as the message and the fields as `extra={"fields": {...}}`:

    logger.info("repair", extra={"fields": {"id": 42, "rule": "all_accounted"}})
    -> ts=2026-11-28T14:00:00Z level=INFO logger=generation.services event=repair id=42 rule=all_accounted
"""

import json
import logging
import re
from datetime import UTC, datetime

_NEEDS_QUOTES = re.compile(r'[ ="\n]')
# json.dumps' spelling of the commonest values, without its cost: a backlog run logs ~2 million values
_LITERALS = {None: "null", True: "true", False: "false"}


def _text_value(value):
    if type(value) is int:
        return str(value)
    if value is None or type(value) is bool:
        return _LITERALS[value]
    text = value if isinstance(value, str) else json.dumps(value, default=str, separators=(",", ":"))
    if not text or _NEEDS_QUOTES.search(text):
        return json.dumps(text)
    return text


class EventFormatter(logging.Formatter):
    def __init__(self, *args, style="text", **kwargs):
        super().__init__()
        self.json = style == "json"

    def format(self, record):
        entry = {
            "ts": datetime.fromtimestamp(record.created, tz=UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "event": record.getMessage(),
            **getattr(record, "fields", {}),
        }
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        if self.json:
            return json.dumps(entry, default=str)
        return " ".join(f"{key}={_text_value(value)}" for key, value in entry.items())
