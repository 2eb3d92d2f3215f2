"""End to end in a real headless Chromium at 1366x900 with the navigation sidebar open: every admin page an
operator uses, what they see on it, and that every list fits the window.

One picture per page (PICTURES) goes to artifacts/screenshots/ (ignored by git, so a test run leaves the checkout
clean), or to $SCREENSHOT_DIR: `make screenshots` sends them to docs/screenshots/, the README's pictures. Skipped
without chromium/chromedriver, a failure under CI=true (tests/conftest.py).
"""

import os
import random
import re
import shutil
import tempfile
from datetime import timedelta

import pytest
from django.contrib.staticfiles.testing import StaticLiveServerTestCase
from django.db import connection
from django.test import override_settings
from django.utils import timezone

from generation import selectors
from generation.admin.statuses import GenerationStatusAdmin
from generation.conf import Windows, job_settings
from generation.db import database_now
from generation.demo import seed_demo_data
from generation.models import (
    CleanupRun,
    GenerationLock,
    GenerationStatus,
    Outcome,
    RecordKind,
    RecordRule,
    RepairRecord,
    RunKind,
    Trigger,
)
from generation.rules import Counters

from .helpers import ROOT

pytestmark = pytest.mark.browser

SCREENSHOTS = ROOT / (os.environ.get("SCREENSHOT_DIR") or "artifacts/screenshots")  # a relative path: from ROOT
WIDTH, HEIGHT, MAX_HEIGHT = 1366, 900, 2400
WAIT_S = 20
CHROMIUM_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
)
# One picture per admin page, in the order the README shows them.
PICTURES = (
    "index.png", "statuses.png", "batch.png", "force-repair-confirmation.png", "locks.png",
    "release-locks-confirmation.png", "runs.png", "run.png", "records.png", "record.png", "undo-confirmation.png",
    "health.png",
)
STAMP = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d UTC")


def chromium():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    profile = tempfile.mkdtemp(prefix="chromium-profile-")  # fresh: no state from a previous run
    options.add_argument(f"--user-data-dir={profile}")
    options.add_argument(f"--window-size={WIDTH},{HEIGHT}")
    driver = webdriver.Chrome(options=options, service=Service(executable_path=shutil.which("chromedriver")))
    driver.set_page_load_timeout(WAIT_S)
    return driver, profile


def operator():
    from django.contrib.auth import get_user_model
    from django.contrib.auth.models import Permission

    user = get_user_model().objects.create_user("operator", password="operator-pw", is_staff=True)
    user.user_permissions.add(*Permission.objects.filter(content_type__app_label="generation", codename__in=[
        "view_generationstatus", "view_generationlock", "view_cleanuprun", "view_repairrecord",
        "repair_generationstatus", "release_generationlock"]))
    return user


def history(days=30, seed=7):
    """What a month of the scheduled job leaves behind: a run every 12 hours, each with what it found stuck and its
    repairs, so the health page's charts have something to draw."""
    rng = random.Random(seed)
    now = timezone.now()
    records = []
    for step in range(days * 2 - 1, 0, -1):
        started = now - timedelta(hours=12 * step + rng.randint(0, 3))
        repaired = {RecordRule.ALL_ACCOUNTED: rng.randint(0, 6), RecordRule.NO_ACTIVE_TASKS: rng.randint(0, 4),
                    RecordRule.COUNTER_OVERFLOW: rng.randint(0, 2)}
        stalled, corrupt, expired = rng.randint(2, 5), rng.randint(0, 1), rng.randint(0, 3)
        corrupt = 1 if step == 1 else corrupt  # the last one found errors: the health page names it
        error = f"batch #{rng.randint(10**5, 10**6)} has corrupt counters (T/Q/P/C/F 3/0/-1/2/0); not changed"
        run = CleanupRun.objects.create(
            trigger=Trigger.CRON, outcome=Outcome.ERRORS if corrupt else Outcome.OK, error=error if corrupt else "",
            finished_at=started + timedelta(seconds=2), examined=sum(repaired.values()) + stalled + corrupt,
            stuck_found=sum(repaired.values()) + stalled + corrupt + rng.randint(0, 1), stalled=stalled,
            corrupt=corrupt, locks_expired=expired, locks_removed=expired,
            **{f"repaired_{rule}": n for rule, n in repaired.items()})
        CleanupRun.objects.filter(pk=run.pk).update(started_at=started)
        for rule, n in repaired.items():
            records += [_status_record(rng, run, rule, started) for _ in range(n)]
        records += [_lock_record(rng, run, started) for _ in range(expired)]
    RepairRecord.objects.bulk_create(records)


def wide_rows():
    """A row of each list with the widest values a large production database has (8-digit batch and record ids,
    9-digit accounts, 6-digit run ids and counts): the lists must fit with them too. Returns a function that takes
    them out again."""
    now = timezone.now()
    snapshot = {"total_requested": 250, "total_queued": 120, "total_processing": 130, "total_completed": 0,
                "total_failed": 0, "status": "processing", "completed_at": None,
                "updated_at": (now - timedelta(days=40)).isoformat()}
    batch = GenerationStatus.objects.create(
        id=12_345_678, account_id=123_456_789, content_type="slideshow", status="completed", total_requested=250,
        total_queued=0, total_processing=0, total_completed=250, total_failed=0, updated_at=now - timedelta(days=40),
        lock_id="wide-lock-0000-0000-0000-000000000000")
    GenerationLock.objects.create(id=1_234_567, account_id=123_456_789, content_type="slideshow", lock_id=batch.lock_id,
                                  locked_at=now - timedelta(days=400))
    run = CleanupRun.objects.create(id=123_456, trigger=Trigger.ADMIN, outcome=Outcome.OK, examined=123_456,
                                    repaired_counter_overflow=123_456, stalled=123_456, corrupt=12_345,
                                    locks_released=123_456, finished_at=now - timedelta(days=40, seconds=-2))
    CleanupRun.objects.filter(pk=run.pk).update(started_at=now - timedelta(days=40))
    RepairRecord.objects.create(id=23_456_789, run=run, kind=RecordKind.STATUS, target_id=batch.pk,
                                account_id=batch.account_id, content_type="slideshow", rule=RecordRule.COUNTER_OVERFLOW,
                                before=snapshot, after={**snapshot, "total_processing": 130}, created_at=now)

    def remove():
        """Out again, so that the rest of the walk (and its pictures) has the ids a demo has: SQLite numbers new
        rows on from the highest id it ever gave, PostgreSQL from its sequences."""
        RepairRecord.objects.filter(run=run).delete()
        run.delete()
        GenerationLock.objects.filter(account_id=batch.account_id).delete()
        batch.delete()
        if connection.vendor == "sqlite":
            with connection.cursor() as cursor:
                for model in (GenerationStatus, GenerationLock, CleanupRun, RepairRecord):
                    table = model._meta.db_table
                    cursor.execute(f"UPDATE sqlite_sequence SET seq = (SELECT max(id) FROM {table}) "  # noqa: S608
                                   "WHERE name = %s", [table])

    return remove


def _status_record(rng, run, rule, at):
    """A repair as the engine records it: the row's counters, status and times before and after."""
    total = rng.randint(4, 40)
    completed = rng.randint(0, total - 2)
    before = {"total_requested": total, "total_queued": 0, "total_processing": 1, "total_completed": completed,
              "total_failed": total - completed - 1, "status": "processing", "completed_at": None,
              "updated_at": (at - timedelta(hours=rng.randint(4, 40))).isoformat()}
    after = {**before, "total_processing": 0, "total_failed": total - completed, "status": "partial",
             "completed_at": at.isoformat(), "updated_at": at.isoformat()}
    return RepairRecord(run=run, kind=RecordKind.STATUS, target_id=rng.randint(10**5, 10**6),
                        account_id=rng.randint(1, 500), content_type="video", rule=rule, before=before, after=after,
                        created_at=at)


def _lock_record(rng, run, at):
    locked_at = (at - timedelta(hours=rng.randint(4, 40))).isoformat()
    before = {"lock_id": f"{rng.getrandbits(64):016x}", "account_id": rng.randint(1, 500), "content_type": "video",
              "locked_at": locked_at, "created_at": locked_at}
    return RepairRecord(run=run, kind=RecordKind.LOCK, target_id=rng.randint(10**5, 10**6),
                        account_id=before["account_id"], content_type="video", rule=RecordRule.EXPIRED_LOCK,
                        before=before, after=None, created_at=at)


def replaced(element) -> bool:
    """The page that held `element` is gone (ec.staleness_of, plus what ChromeDriver may answer instead of
    "stale" while the next page replaces the document: "Node with given id does not belong to the document")."""
    from selenium.common.exceptions import StaleElementReferenceException, WebDriverException

    try:
        element.is_enabled()
    except StaleElementReferenceException:
        return True
    except WebDriverException as exc:
        if "does not belong to the document" in str(exc):
            return True
        raise
    return False


# The server thread builds its middleware when it starts, so the settings are overridden on the class:
# Django applies them in setUpClass before it starts the live server (as in Django's own selenium tests).
@override_settings(
    # settings.py redirects to https and marks cookies secure with DEBUG off; the live server speaks plain http
    SECURE_SSL_REDIRECT=False, SESSION_COOKIE_SECURE=False, CSRF_COOKIE_SECURE=False, SECURE_HSTS_SECONDS=0,
    GENERATION_STUCK_AFTER="3h", GENERATION_LOCK_TTL="3h", GENERATION_FAIL_STALLED_AFTER="",
    CLEANUP_SCHEDULE="*/30 * * * *", PASSWORD_HASHERS=["django.contrib.auth.hashers.MD5PasswordHasher"],
)
class AdminInChromium(StaticLiveServerTestCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.browser, cls.profile = chromium()
        cls.addClassCleanup(shutil.rmtree, cls.profile, ignore_errors=True)
        cls.addClassCleanup(cls.browser.quit)

    # --- helpers

    def find(self, css):
        from selenium.webdriver.common.by import By

        return self.browser.find_element(By.CSS_SELECTOR, css)

    def find_all(self, css):
        from selenium.webdriver.common.by import By

        return self.browser.find_elements(By.CSS_SELECTOR, css)

    def open(self, path, *, ready="#content"):
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support import expected_conditions as ec

        self.browser.get(self.live_server_url + path)
        self.wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, ready)))

    def click(self, css, *, then="#content"):
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support import expected_conditions as ec

        old = self.find("html")
        self.find(css).click()
        self.wait.until(lambda _: replaced(old))
        self.wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, then)))

    def fits(self):
        """The results table is no wider than its container, and the page no wider than the window (at 1366x900,
        with the navigation sidebar open)."""
        assert self.find("#nav-sidebar").is_displayed(), "the navigation sidebar is closed"
        table, container, page, window = self.browser.execute_script(
            "const t = document.querySelector('#result_list');"
            "return [t.offsetWidth, t.parentElement.clientWidth, document.documentElement.scrollWidth,"
            " document.documentElement.clientWidth];")
        assert table <= container, f"{self.browser.current_url}: the table is {table}px wide in {container}px"
        assert page <= window, f"{self.browser.current_url}: the page is {page}px wide in a {window}px window"

    def screenshot(self, name):
        """The whole page at the window's width: the window is made as tall as the document (up to MAX_HEIGHT),
        then put back to 1366x900."""
        assert name in PICTURES
        height, frame = self.browser.execute_script(
            "return [document.documentElement.scrollHeight, window.outerHeight - window.innerHeight]")
        self.browser.set_window_size(WIDTH, min(max(height, HEIGHT - frame) + frame, MAX_HEIGHT))
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        path = SCREENSHOTS / name
        assert self.browser.save_screenshot(str(path)), f"could not save {path}"
        assert path.stat().st_size > 10_000, f"{path} looks empty"
        self.browser.set_window_size(WIDTH, HEIGHT)
        self.taken.add(name)

    def message(self):
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support import expected_conditions as ec

        return self.wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "ul.messagelist li")))

    # --- the walk through the admin

    def test_every_admin_page_an_operator_uses(self):
        from selenium.webdriver.support.ui import WebDriverWait

        self.wait = WebDriverWait(self.browser, WAIT_S)
        self.taken = set()
        self.browser.set_window_size(WIDTH, HEIGHT)
        seed_demo_data(count=120, seed=42, lock_ttl=Windows(timedelta(hours=3)))
        history()
        remove_wide_rows = wide_rows()
        operator()

        # log in through the form, as a person would
        self.open("/admin/login/?next=/admin/", ready="#id_username")
        self.find("#id_username").send_keys("operator")
        self.find("#id_password").send_keys("operator-pw")
        self.click("input[type=submit]", then="#generation-health-module")
        self.the_lists_fit_with_the_widest_values()
        remove_wide_rows()
        self.the_index()
        picked = self.the_statuses_list()
        run_id = self.force_repair(picked)
        self.a_batchs_page()
        self.the_locks()
        self.the_run_and_its_records(run_id, picked)
        self.the_runs()
        self.the_health_page()
        self.all_matching()
        assert self.taken == set(PICTURES)

    def the_lists_fit_with_the_widest_values(self):
        for path, wide in (("generationstatus/", "12345678"), ("generationlock/", "123456789"),
                           ("cleanuprun/", "123456"), ("repairrecord/", "23456789")):
            self.open(f"/admin/generation/{path}", ready="#result_list")
            assert wide in self.find("#result_list").text, path
            self.fits()

    def the_index(self):
        self.open("/admin/", ready="#generation-health-module")
        header = self.find("#site-name").text
        assert header == "butter_admin: generation cleanup"
        assert "VIEW SITE" not in self.find("#user-tools").text.upper()
        stuck = GenerationStatus.objects.filter(status__in=["queuing", "processing"],
                                                updated_at__lt=timezone.now() - timedelta(hours=3)).count()
        assert self.find("#gen-index-stuck strong").text == str(stuck)
        assert int(self.find("#gen-index-expired strong").text) > 0
        self.screenshot("index.png")
        self.click("#gen-index-expired a", then="#result_list")
        assert "expired=yes" in self.browser.current_url

    def the_statuses_list(self) -> dict:
        self.open("/admin/generation/generationstatus/", ready="#result_list")
        self.fits()
        # a batch by its id, as the messages write it
        some = GenerationStatus.objects.order_by("-id")[3]  # an id no account has (the demo's accounts are fewer)
        search = self.find("#searchbar")
        search.send_keys(f"#{some.pk}")
        self.click("#changelist-search input[type=submit]", then="#result_list")
        assert [a.text for a in self.find_all("#result_list th.field-id a")] == [str(some.pk)]

        # stuck, oldest first: one click from the list
        self.open("/admin/generation/generationstatus/", ready="#result_list")
        self.click("#gen-stuck-oldest", then="#result_list")
        rows = self.find_all("#result_list tbody tr")
        shown = [int(row.find_element("css selector", "th.field-id a").text) for row in rows]
        oldest = list(GenerationStatus.objects.filter(pk__in=shown).order_by("updated_at", "-id")
                      .values_list("pk", flat=True))
        assert shown == oldest and len(shown) > 10
        self.fits()

        # pick two of each repairable kind, and one stalled and one corrupt batch to see them left alone
        diagnoses = [row.find_element("css selector", "td.field-diagnosis").text for row in rows]
        wanted = {"all_accounted": 2, "no_active_tasks": 2, "counter_overflow": 2, "stalled": 1, "corrupt": 1}
        picked = {}
        for row, diagnosis in zip(rows, diagnoses, strict=True):
            if wanted.get(diagnosis, 0) > 0:
                wanted[diagnosis] -= 1
                checkbox = row.find_element("css selector", "input.action-select")
                checkbox.click()
                picked[int(checkbox.get_attribute("value"))] = diagnosis
        assert not any(wanted.values()), f"the demo data lacks {wanted}"
        from selenium.webdriver.support.ui import Select

        Select(self.find("select[name=action]")).select_by_value("force_repair")
        self.screenshot("statuses.png")
        return picked

    def force_repair(self, picked) -> int:
        self.click("button[name=index]", then="#gen-changes")
        assert self.find("h1").text == "Force repair generations"
        changes = {int(tr.get_attribute("data-batch")) for tr in self.find_all("#gen-changes tbody tr")}
        assert changes == {pk for pk, d in picked.items() if d not in ("stalled", "corrupt")}
        unchanged = {int(tr.get_attribute("data-batch")): tr.find_element("css selector", ".gen-diagnosis").text
                     for tr in self.find_all("#gen-unchanged tbody tr")}
        assert unchanged == {pk: d for pk, d in picked.items() if d in ("stalled", "corrupt")}  # the list's words
        assert self.find_all("#gen-changes mark.gen-changed")
        self.screenshot("force-repair-confirmation.png")
        self.click("#gen-confirm-form input[type=submit]", then="ul.messagelist li")

        # the message names the batches it changed and links to the run and its records
        message = self.message()
        assert message.get_attribute("class") == "warning"  # the corrupt batch asks for a hand
        repaired = sorted(pk for pk, d in picked.items() if d not in ("stalled", "corrupt"))
        assert message.text.startswith(f"6 generations repaired ({', '.join(f'#{pk}' for pk in repaired)}): ")
        run_link, records_link = message.find_elements("css selector", "a")
        run_id = int(re.search(r"\d+", run_link.text).group(0))
        assert (run_link.text, records_link.text) == (f"Run #{run_id}", "its repair records")
        self.click("ul.messagelist li a:last-of-type", then="#result_list")
        assert {int(a.text.split("#")[1]) for a in self.find_all("#result_list td.field-target a")} >= set(repaired)
        self.fits()
        self.screenshot("records.png")
        self.open("/admin/generation/repairrecord/", ready="#result_list")
        self.fits()
        # a batch's repairs, by its id
        self.open(f"/admin/generation/repairrecord/?q=%23{repaired[0]}", ready="#result_list")
        assert [a.text for a in self.find_all("#result_list td.field-target a")] == [f"batch #{repaired[0]}"]
        return run_id

    def a_batchs_page(self):
        corrupt = next(row for row in GenerationStatus.objects.order_by("id") if Counters.of(row).is_corrupt)
        if not GenerationLock.objects.filter(lock_id=corrupt.lock_id).exists():
            GenerationLock.objects.create(account_id=corrupt.account_id, content_type=corrupt.content_type,
                                          lock_id=corrupt.lock_id, locked_at=corrupt.updated_at)
        self.open(f"/admin/generation/generationstatus/{corrupt.pk}/change/", ready="#gen-explanation")
        explanation = self.find("#gen-explanation").text
        assert explanation.startswith("corrupt Stuck (idle ") and "Fix the counters by hand" in explanation
        bad = self.find_all(".gen-bad")
        assert bad and all(b.value_of_css_property("color") == self.find(".gen-flag-note").value_of_css_property(
            "color") for b in bad)
        assert "The job never changes a batch with a NULL or negative counter" in self.find("#gen-counters-fix").text
        assert re.search(r"^\d+d?\d*h?\d*m? \(last updated \d{4}-\d\d-\d\d \d\d:\d\d UTC\)$",
                         self.find("div.field-idle div.readonly").text)
        assert not self.find_all("#gen-force_repair")  # no rule changes a corrupt batch
        self.screenshot("batch.png")
        self.click("#gen-release-lock button", then="#gen-locks")
        assert self.find("h1").text == "Release generation locks"
        assert GenerationLock.objects.filter(lock_id=corrupt.lock_id).exists()

    def the_locks(self):
        from selenium.webdriver.support.ui import Select

        self.open("/admin/generation/generationlock/?expired=yes", ready="#result_list")
        self.fits()
        assert not self.find_all("#result_list img[src$='icon-yes.svg']")
        badges = self.find_all("#result_list td.field-expiry .gen-expired")
        assert badges and all(b.text.startswith("expired ") for b in badges)
        self.screenshot("locks.png")
        rows = self.find_all("#result_list tbody tr")
        moving = [row for row in rows if row.find_elements("css selector", "td.field-batch .gen-flag-note")]
        still = [row for row in rows if not row.find_elements("css selector", "td.field-batch .gen-flag-note")]
        assert moving, "the demo data has expired locks of batches still progressing"
        for row in [moving[0], *still[:3]]:
            row.find_element("css selector", "input.action-select").click()
        Select(self.find("select[name=action]")).select_by_value("release_selected")
        self.click("button[name=index]", then="#gen-progressing")
        assert self.find("#gen-progressing").text.startswith("1 lock belongs to a batch that is still progressing")
        assert len(self.find_all("#gen-locks tr.gen-flag")) == 1 and len(self.find_all("#gen-locks tbody tr")) == 4
        locks_before = GenerationLock.objects.count()
        self.screenshot("release-locks-confirmation.png")
        self.click("#gen-confirm-form a.cancel-link", then="#result_list")
        assert GenerationLock.objects.count() == locks_before

    def the_run_and_its_records(self, run_id, picked):
        self.open(f"/admin/generation/cleanuprun/{run_id}/change/", ready="#gen-run-records")
        rows = [a.get_attribute("href") for a in self.find_all("#gen-run-records td a[href*='/generationstatus/']")]
        assert len(rows) == 6 and all(re.search(r"/generationstatus/\d+/change/$", href) for href in rows)
        assert STAMP.search(self.find("div.field-started_at div.readonly").text)
        self.screenshot("run.png")

        # a record's page: before and after in the table's column order, times in the one format
        record = RepairRecord.objects.filter(run_id=run_id, kind=RecordKind.STATUS).first()
        self.open(f"/admin/generation/repairrecord/{record.pk}/change/", ready="#gen-comparison")
        fields = [tr.get_attribute("data-field") for tr in self.find_all("#gen-comparison tbody tr")]
        assert fields == ["updated_at", "total_requested", "total_queued", "total_processing", "total_completed",
                          "total_failed", "status", "completed_at"]
        assert STAMP.search(self.find("#gen-comparison tr[data-field=updated_at]").text)
        self.screenshot("record.png")

        # undo the whole run from its page: the confirmation says the batches come back as they were
        self.open(f"/admin/generation/cleanuprun/{run_id}/change/", ready="#gen-undo-run")
        self.click("#gen-undo-run button", then="#gen-summary")
        assert "its updated_at and completed_at included" in self.find("#content-main").text
        assert self.find("#gen-summary").text.startswith(f"{RepairRecord.objects.filter(run_id=run_id).count()} "
                                                         "repair records selected: ")
        assert "stuck again: the next run repairs it again" in self.find("#gen-undone").text
        self.screenshot("undo-confirmation.png")
        self.click("#gen-confirm-form input[type=submit]", then="ul.messagelist li")
        assert re.match(r"\d+ repairs undone \(batch #", self.message().text)
        again = next(pk for pk, d in picked.items() if d == "all_accounted")
        self.open(f"/admin/generation/generationstatus/{again}/change/", ready="#gen-explanation")
        assert self.find("#gen-explanation").text.startswith("all_accounted Stuck (idle ")  # as it looked before
        assert self.find_all("#gen-force_repair")  # and it can be repaired again from its page

    def the_runs(self):
        self.open("/admin/generation/cleanuprun/", ready="#result_list")
        self.fits()
        undo_run = CleanupRun.objects.filter(kind=RunKind.UNDO).get()
        badge = self.find(f"#result_list tr:has(a[href$='/cleanuprun/{undo_run.pk}/change/']) .gen-undo")
        assert badge.text == "undo"
        self.screenshot("runs.png")
        self.open(f"/admin/generation/cleanuprun/?q=%23{undo_run.pk}", ready="#result_list")
        assert [a.text for a in self.find_all("#result_list th.field-id a")] == [str(undo_run.pk)]

    def the_health_page(self):
        self.open("/admin/generation/generationstatus/health/", ready="svg.gen-chart")
        assert self.find("h1").text == "Generation health"
        assert self.find_all("meta[http-equiv=refresh][content='60']")
        assert self.find("#gen-refresh a").text == "stop reloading"
        assert len(self.find_all("#gen-backlog svg a rect")) > 50  # the backlog of each run, linking the run
        assert len(self.find_all("#gen-chart svg rect")) > 30  # repairs per day
        assert self.find("#gen-stuck-total").text.isdigit()
        warning_links = self.find_all("#gen-warnings a")
        assert warning_links and all("/change/" in a.get_attribute("href") for a in warning_links)
        assert STAMP.search(self.find("#gen-runs").text) and not re.search(r"\d:\d\d:\d\d", self.find("#gen-runs").text)
        self.screenshot("health.png")
        self.click("#gen-refresh a", then="svg.gen-chart")
        assert not self.find_all("meta[http-equiv=refresh]")

    def all_matching(self):
        """Select all N matching (more than a page): the confirmation shows totals by rule and a sample; the action
        applies to every one of them."""
        from selenium.webdriver.support.ui import Select

        GenerationStatusAdmin.list_per_page = 5  # the live server runs in this process: a page smaller than the match
        self.addCleanup(setattr, GenerationStatusAdmin, "list_per_page", 100)
        self.open("/admin/generation/generationstatus/?stuck=no_active_tasks", ready="#result_list")
        matching = list(selectors.filter_stuck(GenerationStatus.objects.all(), now=database_now(),
                                               stuck_after=job_settings().stuck_after, rule="no_active_tasks")
                        .values_list("pk", flat=True))
        assert len(matching) > 5
        self.find("#action-toggle").click()
        self.find(".actions .question a").click()
        Select(self.find("select[name=action]")).select_by_value("force_repair")
        self.click("button[name=index]", then="#gen-totals")
        assert f"All {len(matching)} generation statuses" in self.find("#gen-across").text
        assert self.find("#gen-totals tr[data-verdict=no_active_tasks] td.gen-n").text == str(len(matching))
        self.click("#gen-confirm-form input[type=submit]", then="ul.messagelist li")
        assert self.message().text.startswith(f"{len(matching)} generations repaired (")
        assert not GenerationStatus.objects.filter(pk__in=matching, status__in=["queuing", "processing"]).exists()
