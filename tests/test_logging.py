"""The event log: one line per event, and where a command run sends it (generation/logging.py)."""

import logging
import sys

import pytest

from generation.logging import EventFormatter, command_event_log
from generation.models import Trigger

logger = logging.getLogger("generation.services")


def record(event, **fields):
    made = logging.LogRecord("generation.services", logging.INFO, __file__, 1, event, None, None)
    made.fields = fields
    return made


def test_a_str_enum_is_written_as_its_value():
    text = EventFormatter().format(record("run_started", trigger=Trigger.COMMAND, note="two words"))
    assert text.endswith(' event=run_started trigger=command note="two words"')


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
