"""Shared test helpers: running manage.py as a real process, scratch PostgreSQL databases, a user's environment."""

import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import uuid
from contextlib import contextmanager
from pathlib import Path

import psycopg
from django.db import connection, connections

ROOT = Path(__file__).resolve().parent.parent


def manage(*args, env=None, cwd=ROOT, timeout=120):
    """Run `python manage.py ARGS` in a fresh process; returns CompletedProcess (text)."""
    full_env = {**os.environ, "SECRET_KEY": "tests-only-not-a-secret", **(env or {})}
    return subprocess.run(
        [sys.executable, str(ROOT / "manage.py"), *args],
        env=full_env, cwd=cwd, capture_output=True, text=True, timeout=timeout,
    )


def readme_production_env():
    """The README's production environment ("Running in production"): its ```dotenv block, as a dict."""
    [block] = re.findall(r"^```dotenv\n(.*?)^```", (ROOT / "README.md").read_text(), re.M | re.S)
    lines = [line.strip() for line in block.splitlines() if line.strip() and not line.strip().startswith("#")]
    return dict(line.split("=", 1) for line in lines)


def postgres_url(dbname):
    s = connection.settings_dict
    user = s.get("USER") or "postgres"
    host = s.get("HOST") or "127.0.0.1"
    port = s.get("PORT") or 5432
    password = f":{s['PASSWORD']}" if s.get("PASSWORD") else ""
    return f"postgres://{user}{password}@{host}:{port}/{dbname}"


def _admin_connection():
    s = connection.settings_dict
    return psycopg.connect(
        host=s.get("HOST") or "127.0.0.1", port=s.get("PORT") or 5432, user=s.get("USER") or "postgres",
        password=s.get("PASSWORD") or None, dbname="postgres", autocommit=True,
    )


@contextmanager
def scratch_database():
    """An empty PostgreSQL database for the duration of the block; yields its DATABASE_URL."""
    name = f"butter_scratch_{uuid.uuid4().hex[:12]}"
    with _admin_connection() as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield postgres_url(name)
    finally:
        with _admin_connection() as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def create_backend_tables(url):
    """The backend's two tables as its Go ORM creates them (tests/backend_schema.sql), in the database at url."""
    with psycopg.connect(url.replace("postgres://", "postgresql://"), autocommit=True) as conn:
        conn.execute((ROOT / "tests" / "backend_schema.sql").read_text())


class Thread(threading.Thread):
    """Runs fn in a thread with its own Django connection (a real second session to the test
    database); join_result() re-raises what fn raised."""

    def __init__(self, fn):
        super().__init__(daemon=True)
        self.fn, self.result, self.error = fn, None, None

    def run(self):
        try:
            self.result = self.fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            self.error = exc
        finally:
            connections.close_all()

    def join_result(self, timeout=60):
        self.join(timeout)
        assert not self.is_alive(), "thread did not finish"
        if self.error:
            raise self.error
        return self.result


# What the suite sets in its own environment (tests/environment.py, pytest-django, the `make test` around
# it), and DATABASE_URL: a process started as a user would start it gets none of them.
SUITE_VARIABLES = ("SECRET_KEY", "ENV_FILE", "DJANGO_SETTINGS_MODULE", "DATABASE_URL", "MAKEFLAGS", "MFLAGS", "MAKELEVEL")


def user_environment(**extra):
    """os.environ as a user's shell has it, without the suite's own settings; plus `extra`."""
    return {**{k: v for k, v in os.environ.items() if k not in SUITE_VARIABLES}, **extra}


def checkout_copy(target):
    """The project as a fresh clone has it (no .env, no database, no caches), sharing this checkout's .venv."""
    shutil.copytree(ROOT, target, ignore=shutil.ignore_patterns(
        ".git", ".venv", "__pycache__", ".*_cache", ".hypothesis", "artifacts", "logs", "staticfiles", "*.sqlite3*",
        ".env", "docs", "benchmarks"))
    (target / ".venv").symlink_to(ROOT / ".venv")
    return target


def require_binaries(*names, package):
    """Skip the test without these programs on PATH; under CI=true that is a failure, not a skip."""
    import pytest

    from .conftest import IN_CI

    missing = [name for name in names if shutil.which(name) is None]
    if missing:
        reason = f"needs {' and '.join(missing)} on PATH (Debian: apt-get install {package})"
        if IN_CI:
            pytest.fail(f"{reason}; under CI=true this is a failure, not a skip")
        pytest.skip(reason)


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (the caller binds it at once)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Recorder:
    """A small HTTP server on 127.0.0.1 that records each request (method, path, body) and answers 200;
    with `delay`, it answers that late (a monitor that hangs). Use as a context manager."""

    def __init__(self, delay=0.0):
        import http.server

        recorder = self
        self.requests, self.delay = [], delay

        class Handler(http.server.BaseHTTPRequestHandler):
            def _record(self):
                length = int(self.headers.get("Content-Length") or 0)
                recorder.requests.append((self.command, self.path, self.rfile.read(length).decode()))
                if recorder.delay:
                    threading.Event().wait(recorder.delay)
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"OK")

            do_GET = do_POST = do_PUT = do_HEAD = _record

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()
