"""The deployment files, checked offline (no container engine or cluster here).

- Every Kubernetes manifest validates with kubernetes-validate (strict: unknown fields are errors)
  against pinned Kubernetes versions, and says what docs/operations.md says it does.
- The Dockerfile (dockerfile-parse): a slim Python 3.11 base, the same install as `make`, a
  non-root user, and a CMD that is the documented command. What it COPYs is copied into a folder
  the way `docker build` would (honouring .dockerignore), its collectstatic step is run there, and
  the CMD, the migrate Job's commands and the web Deployment's gunicorn are run from that folder
  with the environment their pods get: a file the image lacks would fail them.
"""

import fnmatch
import gzip
import http.client
import json
import re
import shutil
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from copy import deepcopy
from datetime import timedelta
from http.cookies import SimpleCookie
from io import StringIO
from pathlib import Path
from urllib.parse import urlencode

import kubernetes_validate
import psycopg
import pytest
import yaml
from django.core.management import call_command
from django.db import connection
from django.urls import reverse
from dockerfile_parse import DockerfileParser

from generation.conf import _SETTINGS as JOB_SETTINGS
from generation.models import CleanupRun

from .conftest import IN_CI
from .factories import make_batch
from .helpers import ROOT, create_backend_tables, postgres_url, readme_production_env, scratch_database

# The oldest version with CronJob.spec.timeZone generally available, and the newest the pinned
# kubernetes-validate (requirements-dev.txt) knows. CI runs the same check as a command (report).
KUBERNETES_VERSIONS = ("1.27.0", "1.37.0")
MANIFEST_DIR = ROOT / "deploy" / "kubernetes"
MANIFESTS = sorted(MANIFEST_DIR.glob("*.yaml"))
DOCUMENTED_COMMAND = ["python", "manage.py", "cleanup_stuck_generation"]
MIGRATE_COMMAND = ["python", "manage.py", "migrate", "--fake-initial", "--noinput"]
ROLES_COMMAND = ["python", "manage.py", "setup_roles"]
WEB_COMMAND = ["gunicorn", "--config", "python:butter_admin.gunicorn"]
JOB_CONFIG, WEB_CONFIG = "butter-admin-cleanup", "butter-admin-web"


def resources(path):
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def resource(kind, name=None):
    [found] = [doc for path in MANIFESTS for doc in resources(path)
               if doc["kind"] == kind and name in (None, doc["metadata"]["name"])]
    return found


def pod_spec(kind):
    spec = resource(kind)["spec"]
    return (spec["jobTemplate"]["spec"] if kind == "CronJob" else spec)["template"]["spec"]


def containers(kind):
    pod = pod_spec(kind)
    return pod.get("initContainers", []) + pod["containers"]


def dockerfile():
    return DockerfileParser(str(ROOT / "Dockerfile"))


def instructions(name):
    return [item["value"] for item in dockerfile().structure if item["instruction"] == name]


# --- Kubernetes ----------------------------------------------------------------------------


def test_the_expected_manifests_are_there():
    assert [path.name for path in MANIFESTS] == [
        "configmap.yaml", "cronjob.yaml", "migrate-job.yaml", "secret.example.yaml",
        "web-configmap.yaml", "web-deployment.yaml", "web-service.yaml"]


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("path", MANIFESTS, ids=[path.name for path in MANIFESTS])
def test_manifest_validates_strictly(path, version):
    docs = resources(path)
    assert docs, f"{path.name} holds no resource"
    for doc in docs:
        # raises ValidationError, or SchemaNotFoundError for an unknown kind/apiVersion (which the
        # command-line tool only warns about)
        kubernetes_validate.validate(doc, version, strict=True)


def test_the_validator_rejects_a_misspelt_field():
    cronjob = deepcopy(resource("CronJob"))
    cronjob["spec"]["concurrencyPolicyy"] = cronjob["spec"].pop("concurrencyPolicy")
    with pytest.raises(kubernetes_validate.ValidationError, match="concurrencyPolicyy"):
        kubernetes_validate.validate(cronjob, KUBERNETES_VERSIONS[0], strict=True)


def test_cronjob_runs_the_documented_command_every_30_minutes_one_at_a_time():
    spec = resource("CronJob")["spec"]
    assert spec["schedule"] == "*/30 * * * *"
    assert spec["concurrencyPolicy"] == "Forbid"
    assert 0 < spec["startingDeadlineSeconds"] < 30 * 60
    assert spec["successfulJobsHistoryLimit"] >= 1 and spec["failedJobsHistoryLimit"] >= 1
    job = spec["jobTemplate"]["spec"]
    assert job["backoffLimit"] == 0
    # a run must end before the next one is due, or Forbid skips that one
    assert 0 < job["activeDeadlineSeconds"] < 30 * 60
    [container] = pod_spec("CronJob")["containers"]
    assert container["command"] == DOCUMENTED_COMMAND
    assert set(container["resources"]) == {"requests", "limits"}
    assert pod_spec("CronJob")["restartPolicy"] == "Never"


@pytest.mark.parametrize(("kind", "config_maps"), [
    ("CronJob", [JOB_CONFIG]), ("Job", [JOB_CONFIG]), ("Deployment", [JOB_CONFIG, WEB_CONFIG])])
def test_pods_take_settings_from_the_configmaps_and_secret_and_run_as_the_image_user(kind, config_maps):
    pod = pod_spec(kind)
    secret = resource("Secret")
    [user] = instructions("USER")[-1:]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == int(user) != 0
    assert {"name": "tmp", "emptyDir": {"sizeLimit": "16Mi"}} in pod["volumes"]
    # the one writable place, which holds the image's CLEANUP_LOG_FILE (the log folder check stays quiet)
    log_folder = str(Path(dockerfile().envs["CLEANUP_LOG_FILE"]).parent)
    for container in containers(kind):
        assert container["envFrom"] == [{"configMapRef": {"name": resource("ConfigMap", name)["metadata"]["name"]}}
                                        for name in config_maps]
        for variable in container["env"]:
            ref = variable["valueFrom"]["secretKeyRef"]
            assert ref == {"name": secret["metadata"]["name"], "key": variable["name"]}
            assert variable["name"] in secret["stringData"]
        assert {variable["name"] for variable in container["env"]} == {"DATABASE_URL", "SECRET_KEY"}
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
        assert container["volumeMounts"] == [{"name": "tmp", "mountPath": log_folder}]
        assert container["image"] == pod_spec("CronJob")["containers"][0]["image"]
        assert set(container["resources"]) == {"requests", "limits"}


def test_migrate_job_adopts_existing_tables_then_sets_up_the_roles():
    [migrate] = pod_spec("Job")["initContainers"]
    [roles] = pod_spec("Job")["containers"]
    assert (migrate["command"], roles["command"]) == (MIGRATE_COMMAND, ROLES_COMMAND)


def setting_names():
    """Every variable the settings or the gunicorn configuration read."""
    sources = [(ROOT / "butter_admin" / name).read_text() for name in ("settings.py", "gunicorn.py")]
    return {name for source in sources
            for name in re.findall(r'(?:env\.\w+|_parsed|os\.environ\.get)\("(\w+)"', source)}


@pytest.mark.parametrize("name", [JOB_CONFIG, WEB_CONFIG])
def test_configmaps_hold_only_settings_the_project_reads(name):
    unread = set(resource("ConfigMap", name)["data"]) - setting_names()
    assert unread == set(), f"not read by settings.py or gunicorn.py: {unread}"


def test_configmap_holds_every_job_setting():
    # the schedule is the CronJob's own; the log file is the crontab's (the image sets it)
    assert {name for name, *_ in JOB_SETTINGS} - {"CLEANUP_SCHEDULE"} <= set(resource("ConfigMap", JOB_CONFIG)["data"])


def check(*args, kind):
    [container] = pod_spec(kind)["containers"]
    env = {**pod_env(container, resource("Secret")["stringData"]["DATABASE_URL"])}
    return subprocess.run([sys.executable, "manage.py", "check", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)


def test_configmap_and_secret_pass_the_system_checks():
    result = check(kind="CronJob")
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout.strip() == "System check identified no issues (0 silenced)."


def test_the_web_pods_settings_pass_the_deployment_checks():
    result = check("--deploy", kind="Deployment")
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout.strip() == "System check identified no issues (0 silenced)."


def test_the_web_configmap_is_the_readmes_production_environment():
    readme = readme_production_env()
    web = resource("ConfigMap", WEB_CONFIG)["data"]
    assert {key: readme.get(key) for key in web} == web
    # what the README has besides: the Secret's keys, and DEBUG (off by default) written out
    assert set(readme) - set(web) == {"DATABASE_URL", "SECRET_KEY", "DEBUG"}
    assert set(resource("Secret")["stringData"]) == {"DATABASE_URL", "SECRET_KEY", "METRICS_TOKEN"}


def test_the_web_deployment_probes_and_service():
    deployment = resource("Deployment")
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    assert container["command"] == WEB_COMMAND
    [port] = container["ports"]
    # the port gunicorn listens on in the image
    assert f":{port['containerPort']}" == ":" + dockerfile().envs["WEB_BIND"].rsplit(":", 1)[1]
    assert str(port["containerPort"]) in instructions("EXPOSE")
    ready, live = container["readinessProbe"]["httpGet"], container["livenessProbe"]["httpGet"]
    assert (ready["path"], live["path"]) == (reverse("health-ready"), reverse("health-live"))
    hosts = resource("ConfigMap", WEB_CONFIG)["data"]["ALLOWED_HOSTS"].split(",")
    for probe in (ready, live):
        assert probe["port"] == port["name"]
        [host] = [h["value"] for h in probe["httpHeaders"] if h["name"] == "Host"]
        assert host in hosts  # without it Django answers 400 (DisallowedHost) and the probe fails
    # an unreachable database fails the connection attempt before the probe gives up
    connect_timeout = int(resource("ConfigMap", JOB_CONFIG)["data"]["DATABASE_CONNECT_TIMEOUT"])
    assert container["readinessProbe"]["timeoutSeconds"] > connect_timeout
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    assert deployment["spec"]["selector"]["matchLabels"].items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    service = resource("Service")
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    [service_port] = service["spec"]["ports"]
    assert service_port["targetPort"] == port["name"]


# --- Dockerfile ---------------------------------------------------------------------------------


def dockerignore_patterns():
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]


def dockerignored(relative: str) -> bool:
    """Docker's rule, for the pattern forms .dockerignore uses: the last matching pattern wins,
    `!` re-includes, a pattern matching a folder excludes what is in it, `**/` is any depth."""
    parts = relative.split("/")
    prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    ignored = False
    for pattern in dockerignore_patterns():
        negate = pattern.startswith("!")
        body = pattern.removeprefix("!").rstrip("/")
        candidates = [body, body.removeprefix("**/")] if body.startswith("**/") else [body]
        if any(fnmatch.fnmatchcase(prefix, candidate) for prefix in prefixes for candidate in candidates):
            ignored = not negate
    return ignored


def copies():
    """(source, destination) of each COPY, sources relative to the build context."""
    pairs = []
    for value in instructions("COPY"):
        *sources, destination = value.split()
        assert not any(s.startswith("--") for s in sources), "COPY flags are not expected here"
        pairs.extend((source, destination) for source in sources)
    return pairs


def test_dockerfile_base_image_user_and_install():
    parsed = dockerfile()
    assert parsed.baseimage == "python:3.11-slim"
    kinds = [item["instruction"] for item in parsed.structure if item["instruction"] != "COMMENT"]
    # the last USER comes after every RUN: nothing at run time is root
    assert kinds.index("USER") > max(i for i, kind in enumerate(kinds) if kind == "RUN")
    assert instructions("USER")[-1].isdigit() and int(instructions("USER")[-1]) != 0
    # the same install as the Makefile's .venv/.installed: the pinned runtime requirements
    assert "pip install -r requirements.txt" in instructions("RUN")
    makefile = (ROOT / "Makefile").read_text()
    assert "$(BIN)/pip install --quiet -r requirements.txt" in makefile
    assert ("requirements.txt", "./") in copies()
    assert kinds.index("COPY") < kinds.index("RUN")


def test_dockerfile_compiles_the_code_it_copies():
    """The running user may not write /app and PYTHONDONTWRITEBYTECODE is set: without bytecode built into the
    image, every cleanup run would compile each of the project's modules again."""
    kinds = [(item["instruction"], item["value"]) for item in dockerfile().structure]
    compile_at = next(i for i, (kind, value) in enumerate(kinds)
                      if kind == "RUN" and value.startswith("python -m compileall"))
    compiled = [word for word in kinds[compile_at][1].split()[3:] if not word.startswith("-")]
    code = [source.rstrip("/") for source, _ in copies() if source != "requirements.txt"]
    assert sorted(compiled) == sorted(code)
    assert all(i < compile_at for i, (kind, _) in enumerate(kinds) if kind == "COPY")


def test_dockerfile_cmd_is_the_documented_command():
    assert json.loads(dockerfile().cmd) == DOCUMENTED_COMMAND
    docs = (ROOT / "docs" / "operations.md").read_text()
    assert 'CMD ["python", "manage.py", "cleanup_stuck_generation"]' in docs


def test_everything_the_dockerfile_copies_exists_and_is_not_dockerignored():
    assert copies(), "the Dockerfile copies nothing"
    for source, _ in copies():
        path = ROOT / source
        assert path.exists(), source
        assert not dockerignored(source.rstrip("/")), f"{source} is excluded by .dockerignore"


@pytest.mark.parametrize("secret", [".env", ".env.production", "db.sqlite3", ".venv/bin/python",
                                    "generation/__pycache__/models.cpython-311.pyc", "logs/cleanup.log"])
def test_dockerignore_keeps_secrets_and_local_state_out(secret):
    assert dockerignored(secret)


def test_dockerignore_matcher_keeps_what_the_image_needs():
    assert not dockerignored("generation/models.py")
    assert not dockerignored(".env.example")


def build_context_copy(target: Path) -> Path:
    """What the image's WORKDIR holds after the COPYs: `docker build` without the engine."""
    [workdir] = instructions("WORKDIR")
    app = target / workdir.lstrip("/")
    app.mkdir(parents=True)
    for source, destination in copies():
        src, dest = ROOT / source, app / destination
        if src.is_dir():
            for file in src.rglob("*"):
                relative = file.relative_to(ROOT).as_posix()
                if file.is_file() and not dockerignored(relative):
                    out = dest / file.relative_to(src)
                    out.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(file, out)
        else:
            out = dest / src.name if destination.endswith("/") else dest
            out.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, out)
    return app


def pod_env(container, database_url):
    """What the container's process sees: the image's ENV, then the ConfigMaps the container names (in
    order), then the Secret keys it names, with the test database. `python` and `gunicorn` are this
    virtualenv's, standing in for the image's `pip install -r requirements.txt`."""
    env = dict(dockerfile().envs)
    for source in container["envFrom"]:
        env.update(resource("ConfigMap", source["configMapRef"]["name"])["data"])
    secret = resource("Secret")["stringData"]
    env.update({variable["name"]: secret[variable["valueFrom"]["secretKeyRef"]["key"]] for variable in container["env"]})
    return {**env, "DATABASE_URL": database_url, "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin",
            "HOME": "/nonexistent"}


def run_in_image(app: Path, command, database_url, kind="CronJob"):
    """The container's process (the pod of `kind`), run from the image's files."""
    env = pod_env(pod_spec(kind)["containers"][0], database_url)
    return subprocess.run(command, cwd=app, env=env, capture_output=True, text=True, timeout=120)


def build_image(target: Path) -> Path:
    """The COPYs, then the RUN that collects the static files, as `docker build` runs it (`sh -c`)."""
    app = build_context_copy(target)
    [collect] = [command for command in instructions("RUN") if "collectstatic" in command]
    env = {**dockerfile().envs, "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "HOME": "/nonexistent"}
    result = subprocess.run(["sh", "-c", collect], cwd=app, env=env, capture_output=True, text=True, timeout=120)
    assert (result.returncode, result.stderr) == (0, ""), result.stderr
    return app


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_the_image_files_run_the_cleanup_command(tmp_path):
    batch = make_batch((10, 0, 0, 6, 1), idle=timedelta(hours=4))
    app = build_context_copy(tmp_path / "image")
    assert not (app / "tests").exists() and not (app / ".env").exists()
    result = run_in_image(app, json.loads(dockerfile().cmd), postgres_url(connection.settings_dict["NAME"]))
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0] == ("Cleanup: stuck after 3h; lock TTL 3h; fail stalled never; "
                                             "batch size 1500")
    run = CleanupRun.objects.get()
    assert (run.trigger, run.outcome, run.repaired_no_active_tasks) == ("command", "ok", 1)
    assert f"outcome ok, run #{run.pk}" in result.stdout
    # LOG_FORMAT=json from the ConfigMap: every event line on stderr is a JSON object
    events = [json.loads(line) for line in result.stderr.splitlines()]
    assert [e["event"] for e in events if e["event"].startswith("run_")] == ["run_started", "run_finished"]
    assert any(e["event"] == "repair" and e["id"] == batch.pk for e in events)


@pytest.mark.postgres
def test_the_image_files_run_the_migrate_job_on_a_backend_database(tmp_path):
    app = build_context_copy(tmp_path / "image")
    with scratch_database() as url:
        create_backend_tables(url)
        result = run_in_image(app, MIGRATE_COMMAND, url, kind="Job")
        assert result.returncode == 0, result.stderr
        assert "generation.0001_initial... FAKED" in result.stdout
        roles = run_in_image(app, ROLES_COMMAND, url, kind="Job")
        assert roles.returncode == 0, roles.stderr
        assert roles.stdout.splitlines() == ["group viewer: created with 4 permissions",
                                             "group repairer: created with 6 permissions"]
        # after an upgrade with nothing new: a no-op
        again = run_in_image(app, MIGRATE_COMMAND, url, kind="Job")
        assert again.returncode == 0 and "No migrations to apply." in again.stdout
        roles = run_in_image(app, ROLES_COMMAND, url, kind="Job")
        assert roles.returncode == 0 and roles.stdout.splitlines() == [
            "group viewer: up to date (4 permissions)", "group repairer: up to date (6 permissions)"]


# --- The web process: gunicorn from the image's files, as the Deployment runs it -------------------------


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Web:
    """Plain HTTP to a server on 127.0.0.1; headers as the ingress or the kubelet would send them."""

    def __init__(self, port):
        self.port = port

    def request(self, method, path, headers=None, body=None):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            response = conn.getresponse()
            return response.status, response.headers, response.read()
        finally:
            conn.close()

    def probe(self, name):
        """A probe of the Deployment, as the kubelet sends it: straight to the pod, plain HTTP."""
        [container] = pod_spec("Deployment")["containers"]
        get = container[name]["httpGet"]
        status, _, body = self.request("GET", get["path"], {h["name"]: h["value"] for h in get["httpHeaders"]})
        return status, body.decode()


@contextmanager
def gunicorn(app, database_url):
    """The Deployment's container from the image's files, with its pod's environment, on a free loopback
    port with one worker; stopped (SIGTERM, as Kubernetes does) at the end."""
    [container] = pod_spec("Deployment")["containers"]
    port = free_port()
    env = {**pod_env(container, database_url), "WEB_BIND": f"127.0.0.1:{port}", "WEB_CONCURRENCY": "1"}
    process = subprocess.Popen(container["command"], cwd=app, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    web = Web(port)
    try:
        deadline, answer = time.monotonic() + 60, "nothing"
        while answer != (200, "ok\n"):
            assert process.poll() is None, f"gunicorn exited {process.returncode}: {process.stdout.read()}"
            assert time.monotonic() < deadline, f"the liveness probe got {answer} for 60 s"
            time.sleep(0.2)
            try:
                answer = web.probe("livenessProbe")
            except OSError as exc:
                answer = repr(exc)
        yield web
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        process.stdout.close()


HOST = resource("ConfigMap", WEB_CONFIG)["data"]["ALLOWED_HOSTS"].split(",")[0]
ORIGIN = f"https://{HOST}"


def through_the_ingress(client="203.0.113.50", **headers):
    """What the ingress adds: the host, HTTPS (it ended TLS), the client's address appended to X-Forwarded-For
    (whatever the client sent itself stays to its left)."""
    return {"Host": HOST, "X-Forwarded-Proto": "https", "X-Forwarded-For": f"198.51.100.66, {client}", **headers}


def cookies(headers):
    jar = SimpleCookie()
    for line in headers.get_all("Set-Cookie") or []:
        jar.load(line)
    return jar


def log_in(web, username, password, client="203.0.113.50"):
    """The admin's login form through the ingress: GET it (CSRF cookie and token), POST it back."""
    status, headers, body = web.request("GET", "/admin/login/?next=/admin/", through_the_ingress(client))
    assert status == 200
    csrf = cookies(headers)["csrftoken"]
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', body.decode()).group(1)
    form = urlencode({"csrfmiddlewaretoken": token, "username": username, "password": password, "next": "/admin/"})
    return web.request("POST", "/admin/login/?next=/admin/", through_the_ingress(
        client, Cookie=f"csrftoken={csrf.value}", Origin=ORIGIN, Referer=f"{ORIGIN}/admin/login/",
        **{"Content-Type": "application/x-www-form-urlencoded"}), form)


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_the_image_serves_the_admin_with_gunicorn(tmp_path, django_user_model):
    app = build_image(tmp_path / "image")
    manifest = json.loads((app / "staticfiles" / "staticfiles.json").read_text())["paths"]
    django_user_model.objects.create_user("alice", password="the-right-password-42", is_staff=True)
    with gunicorn(app, postgres_url(connection.settings_dict["NAME"])) as web:
        assert web.probe("readinessProbe") == (200, "ok\n")
        assert web.probe("livenessProbe") == (200, "ok\n")

        status, headers, body = web.request("GET", "/admin/login/", through_the_ingress())
        assert status == 200
        assert headers["Strict-Transport-Security"] == "max-age=31536000; includeSubDomains; preload"
        stylesheets = re.findall(r'<link rel="stylesheet" href="([^"]+)"', body.decode())
        [base] = [href for href in stylesheets if href.startswith("/static/admin/css/base.")]
        assert base == f"/static/{manifest['admin/css/base.css']}"  # the content-hashed name
        status, headers, css = web.request("GET", base, through_the_ingress(**{"Accept-Encoding": "gzip"}))
        assert (status, headers["Content-Type"], headers["Content-Encoding"]) == (200, 'text/css; charset="utf-8"', "gzip")
        assert headers["Cache-Control"] == "max-age=315360000, public, immutable"
        assert gzip.decompress(css) == (app / "staticfiles" / base.removeprefix("/static/")).read_bytes()

        # DEBUG is off: an unknown page is a plain 404, never Django's technical page
        status, _, body = web.request("GET", "/no-such-page/", through_the_ingress())
        assert status == 404 and b"URLconf" not in body

        # plain HTTP through the ingress goes to HTTPS
        status, headers, _ = web.request("GET", "/admin/login/", {"Host": HOST})
        assert (status, headers["Location"]) == (301, f"{ORIGIN}/admin/login/")

        # a login: CSRF (origin, referer) and cookies as the production settings want them
        status, headers, _ = log_in(web, "alice", "the-right-password-42")
        assert (status, headers["Location"]) == (302, "/admin/")
        session = cookies(headers)["sessionid"]
        assert session["secure"] and session["httponly"] and int(session["max-age"]) == 8 * 3600
        status, _, body = web.request("GET", "/admin/", through_the_ingress(Cookie=f"sessionid={session.value}"))
        assert status == 200 and "Generation cleanup job" in body.decode()

        # five failures from one client address lock it out, whatever the client puts in X-Forwarded-For
        assert [log_in(web, "alice", "wrong", client="203.0.113.60")[0] for _ in range(5)] == [200] * 4 + [429]
        status, _, body = log_in(web, "alice", "the-right-password-42", client="203.0.113.60")
        assert status == 429 and "Login locked: too many failed attempts." in body.decode()
        assert log_in(web, "alice", "the-right-password-42", client="203.0.113.61")[0] == 302

    # the database down: not ready (no traffic), but alive (no restart)
    closed = postgres_url(connection.settings_dict["NAME"]).replace(
        f":{connection.settings_dict.get('PORT') or 5432}/", f":{free_port()}/")
    with gunicorn(app, closed) as web:
        assert web.probe("readinessProbe") == (503, "database unavailable\n")
        assert web.probe("livenessProbe") == (200, "ok\n")


# --- docs/operations.md: every command shown is run ----------------------------------------------

DOCS = ROOT / "docs" / "operations.md"
HERE = "run here: test_documented_command_runs"
CRON_E2E = "tests/test_cron.py::test_installed_line_runs_under_cron_environment_and_records_a_cron_run"
NO_CLUSTER = "not run: needs a container engine or a cluster; the files are checked offline above"

# How each command in the docs' ```bash blocks is run. Commands not listed here fail
# test_every_documented_command_is_accounted_for, so the docs cannot grow an untested command.
RUN_BY = {
    "make cron-install": CRON_E2E,
    "make cron-show": CRON_E2E,
    "make cron-run": CRON_E2E,
    "make cron-remove": CRON_E2E,
    # the test runs make with ENV_FILE naming its own file, as this line does
    "ENV_FILE=/etc/butter/cleanup.env make cron-install": CRON_E2E,
    "docker build -t butter-admin:0.1.0 .": NO_CLUSTER,
    "kubectl create secret generic butter-admin-db --from-literal=DATABASE_URL='postgres://butter_admin:...@"
    "postgres.internal:5432/butter' --from-literal=SECRET_KEY='...'": NO_CLUSTER,
    "kubectl apply -f deploy/kubernetes/configmap.yaml": NO_CLUSTER,
    "kubectl apply -f deploy/kubernetes/migrate-job.yaml": NO_CLUSTER,
    "kubectl wait --for=condition=complete job/butter-admin-migrate --timeout=10m": NO_CLUSTER,
    "kubectl apply -f deploy/kubernetes/cronjob.yaml": NO_CLUSTER,
    "kubectl create job --from=cronjob/butter-admin-cleanup butter-admin-cleanup-now": NO_CLUSTER,
    "kubectl logs job/butter-admin-cleanup-now": NO_CLUSTER,
    "kubectl get cronjob butter-admin-cleanup": NO_CLUSTER,
    "kubectl get jobs -l app.kubernetes.io/component=cleanup": NO_CLUSTER,
    "kubectl apply -f deploy/kubernetes/web-configmap.yaml": NO_CLUSTER,
    "kubectl apply -f deploy/kubernetes/web-deployment.yaml": NO_CLUSTER,
    "kubectl apply -f deploy/kubernetes/web-service.yaml": NO_CLUSTER,
    "kubectl rollout status deployment/butter-admin-web --timeout=5m": NO_CLUSTER,
    "kubectl exec -it deploy/butter-admin-web -- python manage.py setup_roles --user alice --role repairer": NO_CLUSTER,
    # the same request to the real server, and the same promtool runs, in the monitoring tests
    "curl -s -H \"Authorization: Bearer $METRICS_TOKEN\" https://admin.example.com/metrics | grep "
    "'^butter_generation_stuck_batches'": "tests/test_monitoring_e2e.py::test_prometheus_reads_the_stuck_count_and_the_pushed_run",
    "promtool check rules deploy/prometheus/alerts.yml": "tests/test_alerts.py::test_the_rules_pass_promtool_check",
    "promtool test rules deploy/prometheus/alerts.test.yml": "tests/test_alerts.py::test_the_rules_pass_their_unit_tests",
}


def fenced(language):
    return [body for lang, body in re.findall(r"^```(\w+)\n(.*?)^```", DOCS.read_text(), re.M | re.S)
            if lang == language]


def documented_commands():
    return list(dict.fromkeys(line.strip() for block in fenced("bash") for line in block.splitlines()
                              if line.strip() and not line.strip().startswith("#")))


def runs_here(command):
    # every manage.py command, the jq pipelines over them, and the offline manifest validation
    return command.startswith(("python manage.py ", ".venv/bin/kubernetes-validate "))


def test_every_documented_command_is_accounted_for():
    commands = documented_commands()
    assert len(commands) > 20
    unaccounted = [c for c in commands if not runs_here(c) and c not in RUN_BY]
    assert unaccounted == []
    assert set(RUN_BY) <= set(commands), "RUN_BY names commands the docs no longer show"
    from . import test_cron

    assert callable(getattr(test_cron, CRON_E2E.split("::")[1]))
    # the end-to-end test really runs each make target the docs show
    source = (ROOT / "tests" / "test_cron.py").read_text()
    for target in ("cron-install", "cron-show", "cron-run", "cron-remove"):
        assert f'schedule.make("{target}")' in source


def seed_for_the_docs():
    """A database like the docs' examples, without corrupt rows: every documented command exits 0."""
    make_batch((28, 0, 0, 22, 6), idle=timedelta(days=2), lock_held_for=timedelta(days=3))  # all_accounted
    make_batch((27, 0, 0, 7, 14), idle=timedelta(hours=44))  # no_active_tasks
    make_batch((33, 6, 12, 12, 4), idle=timedelta(hours=40), account_id=42)  # counter_overflow
    make_batch((28, 1, 2, 1, 0), idle=timedelta(hours=20), content_type="story")  # stalled
    # still progressing, but its lock is older than the TTL: what "Many expired locks" looks for
    make_batch((10, 3, 2, 1, 0), idle=timedelta(minutes=5), lock_held_for=timedelta(hours=4), account_id=43)


@pytest.mark.slow
@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("command", [c for c in documented_commands() if runs_here(c)])
def test_documented_command_runs(command, tmp_path):
    if "| jq " in command and shutil.which("jq") is None:
        reason = "needs jq (Debian: apt-get install jq)"
        if IN_CI:
            pytest.fail(f"{reason}; under CI=true this is a failure, not a skip")
        pytest.skip(reason)
    seed_for_the_docs()
    env = {"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "HOME": str(tmp_path),
           "SECRET_KEY": "tests-only-not-a-secret", "DATABASE_URL": postgres_url(connection.settings_dict["NAME"]),
           "CLEANUP_LOG_FILE": str(tmp_path / "cleanup.log")}
    result = subprocess.run(["sh", "-c", command], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    if "jq -r" in command:
        assert re.fullmatch(r"outcome=ok repaired=3 stalled=1 corrupt=0 locks_removed=\d+\n", result.stdout)
    if "--only locks --json | jq" in command:
        assert json.loads(result.stdout)["account_id"] == 43


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_documented_sql_runs():
    seed_for_the_docs()
    call_command("cleanup_stuck_generation", stdout=StringIO(), stderr=StringIO())  # rows for the history queries
    blocks = fenced("sql")
    assert len(blocks) >= 4
    executed = 0
    with connection.cursor() as cursor:
        for block in blocks:
            for statement in filter(None, (s.strip() for s in block.split(";"))):
                cursor.execute(statement)
                cursor.fetchall()
                executed += 1
    assert executed >= len(blocks)


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_documented_query_finds_the_run_holding_the_advisory_lock():
    from generation.db import ADVISORY_LOCK_KEY

    [query] = [block for block in fenced("sql") if "pg_locks" in block]
    assert str(ADVISORY_LOCK_KEY) in query
    url = postgres_url(connection.settings_dict["NAME"]).replace("postgres://", "postgresql://")
    with (psycopg.connect(url, autocommit=True, application_name="butter_admin") as holder,
          scratch_database() as other_url,
          psycopg.connect(other_url.replace("postgres://", "postgresql://"), autocommit=True) as elsewhere):
        holder.execute("SELECT pg_advisory_lock(%s)", [ADVISORY_LOCK_KEY])
        # the same key held in another database on the same server is another job's business
        elsewhere.execute("SELECT pg_advisory_lock(%s)", [ADVISORY_LOCK_KEY])
        with connection.cursor() as cursor:
            cursor.execute(query.strip().rstrip(";"))
            rows = cursor.fetchall()
        assert [(pid, name) for pid, name, *_ in rows] == [(holder.info.backend_pid, "butter_admin")]
