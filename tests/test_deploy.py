"""The deployment files, checked offline (no container engine or cluster here).

- Every Kubernetes manifest validates with kubernetes-validate (strict: unknown fields are errors)
  against pinned Kubernetes versions, and says what docs/operations.md says it does.
- The Dockerfile (dockerfile-parse): a slim Python 3.11 base, the same install as `make`, a
  non-root user, and a CMD that is the documented command. What it COPYs is copied into a folder
  the way `docker build` would (honouring .dockerignore), and the CMD and the migrate Job's command
  are run from that folder: a file the image lacks would fail them.
"""

import fnmatch
import json
import re
import shutil
import subprocess
import sys
from copy import deepcopy
from datetime import timedelta
from io import StringIO
from pathlib import Path

import kubernetes_validate
import psycopg
import pytest
import yaml
from django.core.management import call_command
from django.db import connection
from dockerfile_parse import DockerfileParser

from generation.conf import _SETTINGS as JOB_SETTINGS
from generation.models import CleanupRun

from .conftest import IN_CI
from .factories import make_batch
from .helpers import ROOT, postgres_url, scratch_database

# The oldest version with CronJob.spec.timeZone generally available, and the newest the pinned
# kubernetes-validate (requirements-dev.txt) knows. CI runs the same check as a command (report).
KUBERNETES_VERSIONS = ("1.27.0", "1.37.0")
MANIFEST_DIR = ROOT / "deploy" / "kubernetes"
MANIFESTS = sorted(MANIFEST_DIR.glob("*.yaml"))
DOCUMENTED_COMMAND = ["python", "manage.py", "cleanup_stuck_generation"]
MIGRATE_COMMAND = ["python", "manage.py", "migrate", "--fake-initial", "--noinput"]


def resources(path):
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def resource(kind):
    [found] = [doc for path in MANIFESTS for doc in resources(path) if doc["kind"] == kind]
    return found


def pod_spec(kind):
    spec = resource(kind)["spec"]
    return (spec["jobTemplate"]["spec"] if kind == "CronJob" else spec)["template"]["spec"]


def dockerfile():
    return DockerfileParser(str(ROOT / "Dockerfile"))


def instructions(name):
    return [item["value"] for item in dockerfile().structure if item["instruction"] == name]


# --- Kubernetes ----------------------------------------------------------------------------


def test_the_expected_manifests_are_there():
    assert [path.name for path in MANIFESTS] == [
        "configmap.yaml", "cronjob.yaml", "migrate-job.yaml", "secret.example.yaml"]


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


@pytest.mark.parametrize("kind", ["CronJob", "Job"])
def test_pods_take_settings_from_the_configmap_and_secret_and_run_as_the_image_user(kind):
    pod = pod_spec(kind)
    [container] = pod["containers"]
    assert container["envFrom"] == [{"configMapRef": {"name": resource("ConfigMap")["metadata"]["name"]}}]
    secret = resource("Secret")
    for variable in container["env"]:
        ref = variable["valueFrom"]["secretKeyRef"]
        assert ref == {"name": secret["metadata"]["name"], "key": variable["name"]}
        assert variable["name"] in secret["stringData"]
    assert {variable["name"] for variable in container["env"]} == {"DATABASE_URL", "SECRET_KEY"}
    [user] = instructions("USER")[-1:]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == int(user) != 0
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    # the one writable place, which holds the image's CLEANUP_LOG_FILE (the log folder check stays quiet)
    log_folder = str(Path(dockerfile().envs["CLEANUP_LOG_FILE"]).parent)
    assert container["volumeMounts"] == [{"name": "tmp", "mountPath": log_folder}]
    assert {"name": "tmp", "emptyDir": {"sizeLimit": "16Mi"}} in pod["volumes"]
    assert container["image"] == pod_spec("CronJob")["containers"][0]["image"]


def test_migrate_job_adopts_existing_tables():
    [container] = pod_spec("Job")["containers"]
    assert container["command"] == MIGRATE_COMMAND


def test_configmap_holds_every_job_setting_and_only_settings_the_project_reads():
    data = resource("ConfigMap")["data"]
    settings_source = (ROOT / "butter_admin" / "settings.py").read_text()
    for key in data:
        assert re.search(rf'env\.\w+\("{key}"', settings_source), f"{key} is not read by settings.py"
    # the schedule is the CronJob's own; the log file is the crontab's (the image sets it)
    assert {name for name, *_ in JOB_SETTINGS} - {"CLEANUP_SCHEDULE"} <= set(data)


def test_configmap_and_secret_pass_the_system_checks(tmp_path):
    env = {**resource("ConfigMap")["data"], **resource("Secret")["stringData"], **dockerfile().envs,
           "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin"}
    result = subprocess.run([sys.executable, "manage.py", "check"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=60)
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout.strip() == "System check identified no issues (0 silenced)."


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


def run_in_image(app: Path, command, database_url):
    """The container's process: the image's ENV, the ConfigMap, the Secret (with the test database);
    `python` is this virtualenv's, standing in for the image's `pip install -r requirements.txt`."""
    env = {**dockerfile().envs, **resource("ConfigMap")["data"], **resource("Secret")["stringData"],
           "DATABASE_URL": database_url, "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "HOME": "/nonexistent"}
    return subprocess.run(command, cwd=app, env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_the_image_files_run_the_cleanup_command(tmp_path):
    batch = make_batch((10, 0, 0, 6, 1), idle=timedelta(hours=4))
    app = build_context_copy(tmp_path / "image")
    assert not (app / "tests").exists() and not (app / ".env").exists()
    result = run_in_image(app, json.loads(dockerfile().cmd), postgres_url(connection.settings_dict["NAME"]))
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0] == ("Cleanup: stuck after 3h; lock TTL 3h; fail stalled never; "
                                             "batch size 500")
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
        with psycopg.connect(url.replace("postgres://", "postgresql://"), autocommit=True) as conn:
            conn.execute((ROOT / "tests" / "backend_schema.sql").read_text())
        result = run_in_image(app, MIGRATE_COMMAND, url)
        assert result.returncode == 0, result.stderr
        assert "generation.0001_initial... FAKED" in result.stdout
        again = run_in_image(app, MIGRATE_COMMAND, url)  # after an upgrade with nothing new: a no-op
        assert again.returncode == 0 and "No migrations to apply." in again.stdout


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
    from generation.services import ADVISORY_LOCK_KEY

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
