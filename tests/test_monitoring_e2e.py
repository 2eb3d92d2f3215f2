"""End to end, with the real servers on loopback ports: Debian's Prometheus scrapes /metrics served by the
WSGI application under wsgiref, and the test reads the stuck count back through Prometheus' query API as it
changes in the database; a run pushes to Debian's Pushgateway and the test reads the push back (from the
gateway and through Prometheus); a small HTTP server records the heartbeat pings of a good run, a run with
errors and a run whose database is unreachable; a server whose database is down answers 503 in one line and
Prometheus records it as down. Everything listens on 127.0.0.1 and is stopped at the end.
"""

import json
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from contextlib import ExitStack, contextmanager
from datetime import timedelta

import pytest
from django.db import connection

from generation.models import CleanupRun

from .factories import make_batch
from .helpers import ROOT, Recorder, free_port, postgres_url, require_binaries
from .test_metrics import samples, value

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]

TOKEN = "an-end-to-end-metrics-token"
# the project's WSGI application (butter_admin/wsgi.py) under the standard library's server
SERVE_WSGI = ("import sys\n"
              "from wsgiref.simple_server import make_server, WSGIRequestHandler\n"
              "from butter_admin.wsgi import application\n"
              "WSGIRequestHandler.log_message = lambda *args: None\n"
              "make_server('127.0.0.1', int(sys.argv[1]), application).serve_forever()\n")


@pytest.fixture(autouse=True)
def binaries():
    require_binaries("prometheus", package="prometheus")
    require_binaries("prometheus-pushgateway", package="prometheus-pushgateway")


def app_env(database_url, **extra):
    return {"PATH": "/usr/bin:/bin", "HOME": "/nonexistent", "SECRET_KEY": "tests-only-not-a-secret",
            "DATABASE_URL": database_url, "DATABASE_CONNECT_TIMEOUT": "2", "METRICS_TOKEN": TOKEN,
            "ALLOWED_HOSTS": "127.0.0.1", "SECURE_SSL_REDIRECT": "false", "LOG_LEVEL": "WARNING", **extra}


def http(url, *, headers=None, timeout=5):
    """(status, body) of a GET; an HTTP error status is an answer too."""
    request = urllib.request.Request(url, headers=headers or {})  # noqa: S310 - a loopback URL
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def until(check, *, timeout=40, what=""):
    deadline = time.monotonic() + timeout
    while True:
        try:
            result = check()
        except OSError:
            result = None
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.25)


@contextmanager
def server(args, *, env, ready_url, log):
    with log.open("w") as out:
        process = subprocess.Popen(args, env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
        try:
            until(lambda: process.poll() is None and http(ready_url)[0] in (200, 401, 503),
                  what=f"{args[0]} on {ready_url} (log: {log})")
            yield process
        finally:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def wsgi_server(port, database_url, log):
    return server([sys.executable, "-c", SERVE_WSGI, str(port)], env=app_env(database_url),
                  ready_url=f"http://127.0.0.1:{port}/metrics", log=log)


def prometheus_config(tmp_path, *, web_port, down_port, gateway_port):
    (tmp_path / "token").write_text(TOKEN)
    rules = (ROOT / "deploy" / "prometheus" / "alerts.yml").resolve()
    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(rules)],
        "scrape_configs": [
            {"job_name": "butter-admin", "authorization": {"type": "Bearer", "credentials_file": str(tmp_path / "token")},
             "static_configs": [{"targets": [f"127.0.0.1:{web_port}"]}]},
            {"job_name": "butter-admin-db-down",
             "authorization": {"type": "Bearer", "credentials_file": str(tmp_path / "token")},
             "static_configs": [{"targets": [f"127.0.0.1:{down_port}"]}]},
            {"job_name": "pushgateway", "honor_labels": True,
             "static_configs": [{"targets": [f"127.0.0.1:{gateway_port}"]}]},
        ],
    }
    path = tmp_path / "prometheus.yml"
    path.write_text(json.dumps(config))  # JSON is YAML
    return path


def query(port, promql):
    """The values of an instant query, as {frozenset(labels): float}."""
    status, body = http(f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": promql}))
    assert status == 200, body
    return {frozenset(item["metric"].items()): float(item["value"][1]) for item in json.loads(body)["data"]["result"]}


def until_value(port, promql, expected):
    def check():
        found = query(port, promql)
        return list(found.values()) == [expected]

    until(check, what=f"{promql} == {expected} (last: {query(port, promql)})")


def run_command(database_url, **env):
    return subprocess.run([sys.executable, "manage.py", "cleanup_stuck_generation", "-v", "0"], cwd=ROOT,
                          env=app_env(database_url, **env), capture_output=True, text=True, timeout=120)


def test_prometheus_reads_the_stuck_count_and_the_pushed_run(tmp_path):
    database = postgres_url(connection.settings_dict["NAME"])
    unreachable = f"postgres://postgres@127.0.0.1:{free_port()}/nothing_here"
    ports = {name: free_port() for name in ("web", "down", "gateway", "prometheus")}
    for _ in range(2):
        make_batch((10, 0, 0, 6, 1))  # no_active_tasks
    with ExitStack() as stack:
        stack.enter_context(wsgi_server(ports["web"], database, tmp_path / "web.log"))
        stack.enter_context(wsgi_server(ports["down"], unreachable, tmp_path / "down.log"))
        stack.enter_context(server(
            ["prometheus-pushgateway", f"--web.listen-address=127.0.0.1:{ports['gateway']}"], env={"PATH": "/usr/bin:/bin"},
            ready_url=f"http://127.0.0.1:{ports['gateway']}/-/ready", log=tmp_path / "pushgateway.log"))
        config = prometheus_config(tmp_path, web_port=ports["web"], down_port=ports["down"],
                                   gateway_port=ports["gateway"])
        stack.enter_context(server(
            ["prometheus", f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'data'}",
             f"--web.listen-address=127.0.0.1:{ports['prometheus']}"], env={"PATH": "/usr/bin:/bin"},
            ready_url=f"http://127.0.0.1:{ports['prometheus']}/-/ready", log=tmp_path / "prometheus.log"))
        prometheus = ports["prometheus"]

        # the real server itself: no token, no data; the server without a database: 503 and one line
        status, body = http(f"http://127.0.0.1:{ports['web']}/metrics")
        assert (status, body) == (401, "unauthorized: send Authorization: Bearer <METRICS_TOKEN>, or log in as staff\n")
        status, body = http(f"http://127.0.0.1:{ports['down']}/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
        assert status == 503 and body.count("\n") == 1
        assert body.startswith("metrics unavailable: cannot read the database nothing_here on 127.0.0.1:")

        stuck = 'sum(butter_generation_stuck_batches{job="butter-admin",rule="no_active_tasks"})'
        until_value(prometheus, stuck, 2.0)
        for _ in range(3):
            make_batch((10, 0, 0, 6, 1), content_type="story")
        until_value(prometheus, stuck, 5.0)
        until_value(prometheus, 'butter_generation_stuck_batches{job="butter-admin",rule="no_active_tasks",'
                                'content_type="story"}', 3.0)
        until_value(prometheus, 'up{job="butter-admin-db-down"}', 0.0)  # a 503 is a failed scrape
        until_value(prometheus, 'up{job="butter-admin"}', 1.0)

        # a run repairs them and pushes its figures; Prometheus sees both
        result = run_command(database, CLEANUP_PUSHGATEWAY_URL=f"http://127.0.0.1:{ports['gateway']}",
                             CLEANUP_METRICS_INSTANCE="e2e")
        assert result.returncode == 0, result.stderr
        run = CleanupRun.objects.get()
        assert run.repaired_no_active_tasks == 5
        status, pushed = http(f"http://127.0.0.1:{ports['gateway']}/metrics")
        found = samples(pushed)
        labels = {"job": "butter_cleanup", "instance": "e2e"}
        assert value(found, "butter_cleanup_job_last_run_repaired_batches", rule="no_active_tasks", **labels) == 5
        assert value(found, "butter_cleanup_job_last_run_outcome", outcome="ok", **labels) == 1
        assert value(found, "butter_cleanup_job_last_success_timestamp_seconds", **labels) == pytest.approx(
            time.time(), abs=120)
        until_value(prometheus, 'butter_cleanup_job_last_run_repaired_batches{job="butter_cleanup",instance="e2e",'
                                'rule="no_active_tasks"}', 5.0)
        until_value(prometheus, stuck, 0.0)
        until_value(prometheus, 'butter_cleanup_repairs_total{job="butter-admin",rule="no_active_tasks",'
                                'trigger="command"}', 5.0)
        until_value(prometheus, 'butter_cleanup_job_last_success_timestamp_seconds{job="butter-admin"}',
                    run.finished_at.timestamp())

        # the shipped rules load and evaluate in the real Prometheus
        status, body = http(f"http://127.0.0.1:{prometheus}/api/v1/rules")
        rules = [rule for group in json.loads(body)["data"]["groups"] for rule in group["rules"]]
        assert len(rules) == 6 and all(rule["health"] == "ok" for rule in rules), rules


def test_the_heartbeat_hears_a_good_run_a_run_with_errors_and_a_run_without_its_database():
    database = postgres_url(connection.settings_dict["NAME"])
    unreachable = f"postgres://postgres@127.0.0.1:{free_port()}/nothing_here"
    make_batch((10, 0, 0, 6, 1))
    with Recorder() as monitor:
        env = {"CLEANUP_HEARTBEAT_URL": f"{monitor.url}/ping/e2e"}
        good = run_command(database, **env)
        make_batch((3, 0, -1, 2, 0), idle=timedelta(hours=4))  # corrupt
        errors = run_command(database, **env)
        down = run_command(unreachable, **env)
    assert (good.returncode, errors.returncode, down.returncode) == (0, 1, 1)
    good_run, errors_run = CleanupRun.objects.order_by("id")
    assert monitor.requests == [
        ("POST", "/ping/e2e/start", ""),
        ("POST", "/ping/e2e", good.stdout.strip()),
        ("POST", "/ping/e2e/start", ""),
        ("POST", "/ping/e2e/fail", errors.stdout.strip()),
        ("POST", "/ping/e2e/start", ""),
        ("POST", "/ping/e2e/fail", down.stderr.strip()),
    ]
    assert good.stdout.strip().endswith(f"outcome ok, run #{good_run.pk}")
    assert errors.stdout.strip().endswith(f"outcome errors, run #{errors_run.pk}")
    assert down.stderr.startswith("cannot reach the database nothing_here on 127.0.0.1:")
