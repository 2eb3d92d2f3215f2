"""The event log: one line per event, and where a command run sends it (generation/logging.py)."""

import logging
import sys

import pytest

from generation.logging import LINES_PER_WRITE, EventFormatter, command_event_log, drain, log_events
from generation.models import Trigger

logger = logging.getLogger("generation.services")


def record(event, **fields):
    made = logging.LogRecord("generation.services", logging.INFO, __file__, 1, event, None, None)
    made.fields = fields
    return made


def test_a_str_enum_is_written_as_its_value():
    text = EventFormatter().format(record("run_started", trigger=Trigger.COMMAND, note="two words"))
    assert text.endswith(' event=run_started trigger=command note="two words"')


def test_values_are_quoted_alike_whether_their_text_was_kept_or_not(monkeypatch):
    """The formatter keeps the text of the first short strings it meets; a kept one, one met again once the
    cache is full and a long one are each written as the first time."""
    from generation import logging as event_log

    monkeypatch.setattr(event_log, "_TEXTS", {})
    monkeypatch.setattr(event_log, "_TEXTS_MAX", 2)  # the event name and one value
    values = ["video", "two words", 'say "hi"', "", "x" * 40, "4/0/0/0/0", "a=b"]
    first = [EventFormatter().format(record("e", value=value)).split(" event=e ")[1] for value in values]
    again = [EventFormatter().format(record("e", value=value)).split(" event=e ")[1] for value in values]
    assert first == again == ["value=video", 'value="two words"', 'value="say \\"hi\\""', 'value=""',
                              "value=" + "x" * 40, "value=4/0/0/0/0", 'value="a=b"']
    assert list(event_log._TEXTS) == ["e", "video"]  # the event name, then the first value


def test_a_pages_events_are_written_in_order_a_few_at_a_time_to_every_handler(tmp_path):
    """log_events with a function: its events are made on the writer thread and written LINES_PER_WRITE
    lines per record, each line once to each handler, in order; an empty page writes nothing."""
    generation = logging.getLogger("generation")
    files = [tmp_path / "one.log", tmp_path / "two.log"]
    handlers = [logging.FileHandler(path, encoding="utf-8") for path in files]
    writes = []
    for handler in handlers:
        handler.setFormatter(EventFormatter())
        handler.emit = (lambda emit: lambda made: (writes.append(len(made.events)), emit(made)))(handler.emit)
    saved, generation.handlers = generation.handlers, handlers
    count = 2 * LINES_PER_WRITE + 7
    try:
        log_events(logger, logging.INFO, lambda: (("repair", {"id": n}) for n in range(count)))
        log_events(logger, logging.ERROR, lambda: iter(()))
        drain()
    finally:
        generation.handlers = saved
        for handler in handlers:
            handler.close()
    for path in files:
        lines = path.read_text().splitlines()
        assert [line.rsplit(" ", 1)[1] for line in lines] == [f"id={n}" for n in range(count)]
        assert all(" level=INFO " in line for line in lines)
    assert writes == [LINES_PER_WRITE] * 2 + [LINES_PER_WRITE] * 2 + [7] * 2


@pytest.fixture
def console():
    """The `generation` logger with a console handler, as settings.LOGGING configures it."""
    generation = logging.getLogger("generation")
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(EventFormatter())
    saved = generation.handlers
    generation.handlers = [handler]
    yield handler
    generation.handlers = saved


def test_not_at_a_terminal_events_go_to_stderr_and_the_handlers_come_back(console, capsys, tmp_path):
    before = list(logging.getLogger("generation").handlers)
    with command_event_log(at_terminal=False, shown=False, log_file=tmp_path / "c.log") as where:
        logger.info("repair", extra={"fields": {"id": 1}})
    assert where.on_stderr and where.path is None
    captured = capsys.readouterr()
    assert " event=repair id=1" in captured.err and captured.out == ""
    assert logging.getLogger("generation").handlers == before
    assert not (tmp_path / "c.log").exists()


def test_at_a_terminal_events_are_appended_to_the_log_file(console, capsys, tmp_path):
    log_file = tmp_path / "new" / "cleanup.log"
    log_file.parent.mkdir()
    log_file.write_text("an earlier line\n")
    with command_event_log(at_terminal=True, shown=False, log_file=log_file) as where:
        logger.info("repair", extra={"fields": {"id": 1}})
    assert (where.on_stderr, where.path, where.error) == (False, log_file, "")
    lines = log_file.read_text().splitlines()
    assert lines[0] == "an earlier line" and lines[1].endswith(" event=repair id=1")
    assert capsys.readouterr() == ("", "")


def test_at_a_terminal_an_unwritable_log_file_keeps_nothing_and_says_why(console, capsys, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with command_event_log(at_terminal=True, shown=False, log_file=blocker / "cleanup.log") as where:
        logger.warning("page_failed", extra={"fields": {"what": "x"}})  # not even logging's last resort prints it
    assert where.path is None and where.error.startswith(f"cannot write {blocker / 'cleanup.log'}: ")
    assert capsys.readouterr() == ("", "")


def test_at_a_terminal_v3_writes_events_on_stderr_through_tqdm(console, capsys, tmp_path, monkeypatch):
    from tqdm import tqdm

    written = []
    monkeypatch.setattr(tqdm, "write", classmethod(lambda cls, text, file=None, **kw: written.append((text, file))))
    with command_event_log(at_terminal=True, shown=True, log_file=tmp_path / "c.log") as where:
        logger.info("repair", extra={"fields": {"id": 1}})
    assert where.on_stderr
    [(text, file)] = written
    assert text.endswith(" event=repair id=1") and file is sys.stderr
    assert not (tmp_path / "c.log").exists()
