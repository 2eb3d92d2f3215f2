import os

import pytest
from django.conf import settings
from django.db import connection
from django.test import override_settings

IN_CI = os.environ.get("CI") == "true"
# Debian's chromium and chromium-driver (what Django's own selenium tests use).
BROWSER_BINARIES = ("chromium", "chromedriver")


def pytest_report_header(config):
    return f"database: {connection.vendor} ({connection.settings_dict['NAME']}); CI={IN_CI}"


@pytest.fixture(scope="session", autouse=True)
def static_files_without_collectstatic(tmp_path_factory):
    """The production storage (settings.py) needs `collectstatic`'s manifest before any page that links
    a static file can render, and WhiteNoise warns about a missing STATIC_ROOT; the tests render pages
    without running it. For the whole session, so the browser test's live server (started before any
    function fixture) has it too. The production setup itself is tested end to end in
    tests/test_deploy.py (collectstatic, then gunicorn)."""
    storages = {**settings.STORAGES, "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"}}
    with override_settings(STORAGES=storages, STATIC_ROOT=tmp_path_factory.mktemp("static_root")):
        yield


def pytest_runtest_setup(item):
    # PostgreSQL-only tests are skipped with a reason on SQLite; in CI a skip
    # would hide that the PostgreSQL half never ran, so it fails instead.
    if item.get_closest_marker("postgres") and connection.vendor != "postgresql":
        reason = "needs PostgreSQL (set DATABASE_URL=postgres://...)"
        if IN_CI:
            pytest.fail(f"{reason}; under CI=true this is a failure, not a skip")
        pytest.skip(reason)
    # Browser tests likewise: skipped without Chromium and its driver, a failure in CI.
    if item.get_closest_marker("browser"):
        from .helpers import require_binaries

        require_binaries(*BROWSER_BINARIES, package="chromium chromium-driver")


def pytest_terminal_summary(terminalreporter):
    # Figures a test records with record_property("figures", text) (the soak's batches, increments, runs,
    # repairs, lost increments) are printed at the end of every run, so CI logs show them without -s.
    lines = [
        f"{report.nodeid}: {value}"
        for outcome in ("passed", "failed")
        for report in terminalreporter.stats.get(outcome, [])
        if report.when == "call"
        for name, value in report.user_properties
        if name == "figures"
    ]
    if lines:
        terminalreporter.section("figures")
        for line in lines:
            terminalreporter.write_line(line)
