"""One line per event, machine-parsable: `key=value` pairs (LOG_FORMAT=text) or JSON.

Callers log an event name as the message and the fields as `extra={"fields": {...}}`:

    logger.info("repair", extra={"fields": {"id": 42, "rule": "all_accounted"}})
    -> ts=2026-11-28T14:00:00Z level=INFO logger=generation.services event=repair id=42 rule=all_accounted
"""

import atexit
import copy
import itertools
import json
import logging
import queue
import re
import sys
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

_NEEDS_QUOTES = re.compile(r'[ ="\n]')
# json.dumps' spelling of the commonest values, without its cost: a backlog run logs ~2 million values
_LITERALS = {None: "null", True: "true", False: "false"}
LINES_PER_WRITE = 100  # a page's event lines are formatted and written this many at a time


# the text of the first short strings seen: a backlog's lines repeat a few content types, statuses and rules
# ~100,000 times each (the first 512: a string the cache has no room for is checked for quotes each time)
_TEXTS = {}
_TEXTS_MAX, _TEXT_CACHED_LEN = 512, 32


def _text_value(value):
    kind = type(value)
    if kind is str:
        text = _TEXTS.get(value)
        if text is None:
            text = _quoted(value)
            if len(value) <= _TEXT_CACHED_LEN and len(_TEXTS) < _TEXTS_MAX:
                _TEXTS[value] = text
        return text
    if kind is int or kind is float:
        return repr(value)
    if value is None or kind is bool:
        return _LITERALS[value]
    if isinstance(value, str):  # a StrEnum (Trigger, Rule): its value, as the JSON format writes it
        return _quoted(str(value))
    return _quoted(json.dumps(value, default=str, separators=(",", ":")))


def _quoted(text: str) -> str:
    return json.dumps(text) if not text or _NEEDS_QUOTES.search(text) else text


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
        prefix = " ".join(f"{key}={_quoted(value)}" for key, value in head.items())  # not kept: ts changes
        return "\n".join([
            " ".join([prefix, f"event={_text_value(event)}",
                      *[f"{key}={_text_value(value)}" for key, value in (fields | exc if exc else fields).items()]])
            for event, fields in events])


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
                if not callable(record.events):
                    logger.handle(record)
                    continue
                # built here from the page's rows, and written LINES_PER_WRITE lines at a time (the same record's
                # time and level): a page's worth of lines is never held at once
                events = record.events()
                while chunk := list(itertools.islice(events, LINES_PER_WRITE)):
                    part = copy.copy(record)
                    part.events = chunk
                    logger.handle(part)
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
    returns them, best as a generator (called on the writer thread, which writes them LINES_PER_WRITE at a
    time). The record is made now and written by the writer thread."""
    if logger.isEnabledFor(level) and (callable(events) or events):
        record = logger.makeRecord(logger.name, level, "(events)", 0, "events", None, None,
                                   extra={"events": events})
        _writer.submit(logger, record)


def log_event(logger, level, event, fields):
    """One event, written in order with the others (log_events)."""
    log_events(logger, level, [(event, fields)])


# --- Where a command's event log goes ---------------------------------------------------------------


@dataclass(frozen=True)
class EventLog:
    """Where a command run's event log went: stderr; or, at a terminal, appended to `path` (None with
    `error`: the file could not be opened, and the events are not kept)."""

    on_stderr: bool
    path: Path | None = None
    error: str = ""


class _AboveProgressBars(logging.StreamHandler):
    """Writes each record with tqdm.write: a progress bar on the terminal is cleared, the lines are written
    where it was, and the bar is drawn again below them, so an event line never lands inside it."""

    def emit(self, record):
        from tqdm import tqdm

        try:
            tqdm.write(self.format(record), file=self.stream)
        except Exception:  # noqa: BLE001 - logging's own convention: report, never raise from a handler
            self.handleError(record)


def _is_console(handler) -> bool:
    # exactly settings.LOGGING's console handler class: not a FileHandler, nor a test runner's capture
    return type(handler) is logging.StreamHandler


@contextmanager
def command_event_log(*, at_terminal: bool, shown: bool, log_file: Path):
    """Route the `generation` logger's console output for one command run; yields an EventLog.

    Not at a terminal (cron, Kubernetes, a pipe or a file), the events go to stderr, one line each, where
    log shippers and the operations guide's pipelines read them; stdout keeps the report alone. At a
    terminal (stdout and stderr both one) a person reads the report, and an event line per batch beside
    it would say everything twice: the events are appended to the job's log file (CLEANUP_LOG_FILE, where
    the scheduled runs' events are too), or written on stderr above the progress bar when `shown` (-v 3).
    Handlers that are not the console's (a file LOGGING names) are left as they are."""
    logger = logging.getLogger("generation")
    original = logger.handlers
    consoles = [handler for handler in original if _is_console(handler)]
    if not consoles:  # LOGGING sends the events elsewhere: leave them there
        yield EventLog(on_stderr=False)
        return
    where = EventLog(on_stderr=True)
    if not at_terminal:
        replacement = logging.StreamHandler(sys.stderr)
    elif shown:
        replacement = _AboveProgressBars(sys.stderr)
    else:
        try:
            log_file.parent.mkdir(parents=True, exist_ok=True)
            replacement = logging.FileHandler(log_file, mode="a", encoding="utf-8")
            where = EventLog(on_stderr=False, path=log_file)
        except OSError as exc:
            # without a handler, logging's last resort would print the warnings on stderr after all
            replacement = logging.NullHandler()
            where = EventLog(on_stderr=False, error=f"cannot write {log_file}: {exc.strerror or exc}")
    replacement.setFormatter(consoles[0].formatter)
    replacement.setLevel(consoles[0].level)
    logger.handlers = [handler for handler in original if not _is_console(handler)] + [replacement]
    try:
        yield where
    finally:
        logger.handlers = original
        replacement.close()
