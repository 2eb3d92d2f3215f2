"""One line per event, machine-parsable: `key=value` pairs (LOG_FORMAT=text) or JSON.

Callers log an event name as the message and the fields as `extra={"fields": {...}}`:

    logger.info("repair", extra={"fields": {"id": 42, "rule": "all_accounted"}})
    -> ts=2026-11-28T14:00:00Z level=INFO logger=generation.services event=repair id=42 rule=all_accounted
"""

import atexit
import json
import logging
import queue
import re
import threading
from datetime import UTC, datetime

_NEEDS_QUOTES = re.compile(r'[ ="\n]')
# json.dumps' spelling of the commonest values, without its cost: a backlog run logs ~2 million values
_LITERALS = {None: "null", True: "true", False: "false"}


def _text_value(value):
    kind = type(value)
    if kind is int or kind is float:
        return repr(value)
    if value is None or kind is bool:
        return _LITERALS[value]
    text = value if kind is str else json.dumps(value, default=str, separators=(",", ":"))
    if not text or _NEEDS_QUOTES.search(text):
        return json.dumps(text)
    return text


class EventFormatter(logging.Formatter):
    """A record is one event (its message, `fields`), or several (`events`: [(event, fields), ...]) that
    share its time, level and logger, one line each."""

    def __init__(self, *args, style="text", **kwargs):
        super().__init__()
        self.json = style == "json"

    def format(self, record):
        head = {
            "ts": datetime.fromtimestamp(record.created, tz=UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
        }
        events = getattr(record, "events", None) or [(record.getMessage(), getattr(record, "fields", {}))]
        exc = {"exc": self.formatException(record.exc_info)} if record.exc_info else {}
        if self.json:
            return "\n".join(json.dumps({**head, "event": event, **fields, **exc}, default=str)
                             for event, fields in events)
        prefix = " ".join(f"{key}={_text_value(value)}" for key, value in head.items())
        return "\n".join(
            " ".join((prefix, f"event={_text_value(event)}",
                      *(f"{key}={_text_value(value)}" for key, value in {**fields, **exc}.items())))
            for event, fields in events)


class _EventWriter:
    """One thread that hands the engine's event records to their handlers, in the order they were logged.

    A backlog's run logs a line per batch: formatting and writing 170,000 lines took 1.5 s of a 12 s run,
    all of it on the thread that waits for the database between pages. The records are made where the event
    happens (their time, level and logger are the event's), then formatted and written here while that thread
    waits; `drain()` waits until every record logged so far is written (each entry point drains before it
    returns, so whoever reads the log next sees all of it)."""

    def __init__(self):
        self.queue = queue.Queue()
        self.thread = None
        self.lock = threading.Lock()

    def submit(self, logger, record):
        with self.lock:
            if self.thread is None or not self.thread.is_alive():
                self.thread = threading.Thread(target=self._run, name="event-log", daemon=True)
                self.thread.start()
        self.queue.put((logger, record))

    def _run(self):
        while True:
            logger, record = self.queue.get()
            try:
                if callable(record.events):  # built here: the page's rows, not yet its lines
                    record.events = record.events()
                if record.events:
                    logger.handle(record)
            except Exception:  # noqa: BLE001 - logging's own convention: report, never raise from a handler
                logging.Handler().handleError(record)
            finally:
                self.queue.task_done()

    def drain(self):
        if self.thread is not None:
            self.queue.join()


_writer = _EventWriter()
atexit.register(_writer.drain)  # registered after logging's own: runs before its shutdown closes the handlers
drain = _writer.drain


def log_events(logger, level, events):
    """Log many events as one record, one line each: `events` is [(event, fields), ...] or a function that
    returns them (called on the writer thread). The record is made now and written by the writer thread."""
    if logger.isEnabledFor(level) and (callable(events) or events):
        record = logger.makeRecord(logger.name, level, "(events)", 0, "events", None, None,
                                   extra={"events": events})
        _writer.submit(logger, record)


def log_event(logger, level, event, fields):
    """One event, written in order with the others (log_events)."""
    log_events(logger, level, [(event, fields)])
