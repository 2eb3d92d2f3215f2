import os

import pytest
from django.db import connection

IN_CI = os.environ.get("CI") == "true"
# Debian's chromium and chromium-driver (what Django's own selenium tests use).
BROWSER_BINARIES = ("chromium", "chromedriver")


def pytest_report_header(config):
    return f"database: {connection.vendor} ({connection.settings_dict['NAME']}); CI={IN_CI}"


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
