"""One line per event, machine-parsable: `key=value` pairs (LOG_FORMAT=text) or JSON.

Callers log an event name as the message and the fields as `extra={"fields": {...}}`:

    logger.info("repair", extra={"fields": {"id": 42, "rule": "all_accounted"}})
    -> ts=2026-11-28T14:00:00Z level=INFO logger=generation.services event=repair id=42 rule=all_accounted
"""

import json
import logging
from datetime import UTC, datetime


def _text_value(value):
    text = value if isinstance(value, str) else json.dumps(value, default=str, separators=(",", ":"))
    if text == "" or any(ch in text for ch in ' ="\n'):
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
