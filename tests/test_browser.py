"""End to end in a real headless Chromium: filter stuck batches, force-repair a few, read the health page.

The screenshots it takes go to artifacts/screenshots/ (ignored by git, so a test run leaves the checkout
clean), or to $SCREENSHOT_DIR: `make screenshots` sends them to docs/screenshots/, the README's pictures.
Skipped without chromium/chromedriver, a failure under CI=true (tests/conftest.py).
"""

import os
import random
import shutil
import tempfile
from datetime import timedelta

import pytest
from django.contrib.staticfiles.testing import StaticLiveServerTestCase
from django.test import override_settings
from django.utils import timezone

from generation.conf import Windows
from generation.demo import seed_demo_data
from generation.models import (
    CleanupRun,
    GenerationLock,
    GenerationStatus,
    Outcome,
    RecordKind,
    RecordRule,
    RepairRecord,
    Trigger,
)

from .helpers import ROOT

pytestmark = pytest.mark.browser

SCREENSHOTS = ROOT / (os.environ.get("SCREENSHOT_DIR") or "artifacts/screenshots")  # a relative path: from ROOT
WIDTH, MAX_HEIGHT = 1500, 2400
WAIT_S = 20
CHROMIUM_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
)


def chromium():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    profile = tempfile.mkdtemp(prefix="chromium-profile-")  # fresh: no state from a previous run
    options.add_argument(f"--user-data-dir={profile}")
    options.add_argument(f"--window-size={WIDTH},1000")
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
    """What a month of the scheduled job leaves behind, so the health page's chart has something to draw."""
    rng = random.Random(seed)
    now = timezone.now()
    records = []
    for ago in range(days - 1, 0, -1):
        started = now - timedelta(days=ago, hours=rng.randint(0, 12))
        run = CleanupRun.objects.create(trigger=Trigger.CRON, outcome=Outcome.OK, finished_at=started + timedelta(seconds=2))
        CleanupRun.objects.filter(pk=run.pk).update(started_at=started)
        for rule, kind, most in (
            (RecordRule.ALL_ACCOUNTED, RecordKind.STATUS, 6), (RecordRule.NO_ACTIVE_TASKS, RecordKind.STATUS, 4),
            (RecordRule.COUNTER_OVERFLOW, RecordKind.STATUS, 2), (RecordRule.EXPIRED_LOCK, RecordKind.LOCK, 3),
        ):
            for _ in range(rng.randint(0, most)):
                records.append(RepairRecord(run=run, kind=kind, target_id=rng.randint(1, 10**6), account_id=rng.randint(1, 500),
                                            content_type="video", rule=rule, before={}, after={}, created_at=started))
    RepairRecord.objects.bulk_create(records)


def screenshot(driver, name):
    """The whole page: the window is made as tall as the document (up to MAX_HEIGHT) first."""
    # the window's size includes the (headless) browser's own frame: add it to the page's height
    height, frame = driver.execute_script(
        "return [document.documentElement.scrollHeight, window.outerHeight - window.innerHeight]")
    driver.set_window_size(WIDTH, min(max(height, 600) + frame, MAX_HEIGHT))
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / name
    assert driver.save_screenshot(str(path)), f"could not save {path}"
    assert path.stat().st_size > 10_000, f"{path} looks empty"
    return path


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

    def test_force_repair_stuck_batches_and_read_the_health_page(self):
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support import expected_conditions as ec
        from selenium.webdriver.support.ui import Select, WebDriverWait

        browser, url = self.browser, self.live_server_url
        wait = WebDriverWait(browser, WAIT_S)
        seed_demo_data(count=80, seed=42, lock_ttl=Windows(timedelta(hours=3)))
        history()
        operator()

        # log in through the form, as a person would
        browser.get(f"{url}/admin/login/?next=/admin/")
        browser.find_element(By.ID, "id_username").send_keys("operator")
        browser.find_element(By.ID, "id_password").send_keys("operator-pw")
        browser.find_element(By.CSS_SELECTOR, "input[type=submit]").click()
        wait.until(ec.presence_of_element_located((By.ID, "generation-health-module")))

        # the statuses list, filtered to the stuck ones through the sidebar
        browser.get(f"{url}/admin/generation/generationstatus/")
        browser.find_element(By.LINK_TEXT, "stuck (idle over 3h)").click()
        wait.until(ec.url_contains("stuck=yes"))
        rows = browser.find_elements(By.CSS_SELECTOR, "#result_list tbody tr")
        diagnoses = [row.find_element(By.CSS_SELECTOR, "td.field-diagnosis").text for row in rows]
        assert diagnoses and set(diagnoses) <= {"all_accounted", "no_active_tasks", "counter_overflow", "stalled", "corrupt"}
        assert len(rows) == GenerationStatus.objects.filter(
            status__in=["queuing", "processing"], updated_at__lt=timezone.now() - timedelta(hours=3)).count()

        # pick two of each repairable kind, and one stalled and one corrupt batch to see them left alone
        wanted = {"all_accounted": 2, "no_active_tasks": 2, "counter_overflow": 2, "stalled": 1, "corrupt": 1}
        picked = {}
        for row, diagnosis in zip(rows, diagnoses, strict=True):
            if wanted.get(diagnosis, 0) > 0:
                wanted[diagnosis] -= 1
                checkbox = row.find_element(By.CSS_SELECTOR, "input.action-select")
                checkbox.click()
                picked[int(checkbox.get_attribute("value"))] = diagnosis
        assert not any(wanted.values()), f"the demo data lacks {wanted}"
        Select(browser.find_element(By.NAME, "action")).select_by_value("force_repair")
        screenshot(browser, "statuses-stuck-selected.png")
        browser.find_element(By.CSS_SELECTOR, "button[name=index]").click()

        # the confirmation page: each row with its rule, before and after; nothing changed yet
        wait.until(ec.presence_of_element_located((By.ID, "gen-changes")))
        assert browser.find_element(By.TAG_NAME, "h1").text == "Force repair generations"
        changes = {int(tr.get_attribute("data-batch")): tr.text
                   for tr in browser.find_elements(By.CSS_SELECTOR, "#gen-changes tbody tr")}
        assert set(changes) == {pk for pk, d in picked.items() if d in ("all_accounted", "no_active_tasks",
                                                                          "counter_overflow")}
        unchanged = {int(tr.get_attribute("data-batch"))
                     for tr in browser.find_elements(By.CSS_SELECTOR, "#gen-unchanged tbody tr")}
        assert unchanged == {pk for pk, d in picked.items() if d in ("stalled", "corrupt")}
        assert browser.find_elements(By.CSS_SELECTOR, "#gen-changes mark.gen-changed")
        before = {row.pk: (row.status, row.total_queued, row.total_processing, row.total_failed)
                  for row in GenerationStatus.objects.filter(pk__in=picked)}
        assert all(status == "processing" or status == "queuing" for status, *_ in before.values())
        screenshot(browser, "force-repair-confirmation.png")
        browser.find_element(By.CSS_SELECTOR, "#gen-confirm-form input[type=submit]").click()

        # back on the stuck list: the message, and the repaired batches no longer stuck
        message = wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "ul.messagelist li")))
        screenshot(browser, "statuses-after-repair.png")
        assert message.get_attribute("class") == "warning"  # the corrupt batch asks for a hand
        assert message.text.startswith("6 generations repaired: 2 all_accounted, 2 no_active_tasks, 2 counter_overflow;")
        assert "1 corrupt (negative or NULL counters), not changed: fix by hand" in message.text
        after = {row.pk: row for row in GenerationStatus.objects.filter(pk__in=picked)}
        for pk, diagnosis in picked.items():
            if diagnosis in ("all_accounted", "no_active_tasks"):
                assert after[pk].status in ("completed", "partial", "failed")
            elif diagnosis == "counter_overflow":
                assert after[pk].status in ("queuing", "processing") and after[pk].updated_at > timezone.now() - timedelta(
                    minutes=5)
            else:
                assert (after[pk].status, after[pk].total_queued, after[pk].total_processing, after[pk].total_failed) \
                    == before[pk]
        assert RepairRecord.objects.filter(actor__username="operator", rule__in=["all_accounted", "no_active_tasks",
                                                                                  "counter_overflow"]).count() == 6
        listed = {int(cb.get_attribute("value")) for cb in browser.find_elements(By.CSS_SELECTOR, "input.action-select")}
        assert not listed & {pk for pk, d in picked.items() if d != "stalled" and d != "corrupt"}

        # the repaired rows themselves, with their new statuses
        ids = ",".join(str(pk) for pk in sorted(picked))
        browser.get(f"{url}/admin/generation/generationstatus/?id__in={ids}")
        shown = {tr.find_element(By.CSS_SELECTOR, "th.field-id a").text:
                 tr.find_element(By.CSS_SELECTOR, "td.field-status").text
                 for tr in browser.find_elements(By.CSS_SELECTOR, "#result_list tbody tr")}
        assert shown == {str(pk): row.status for pk, row in after.items()}
        screenshot(browser, "statuses-repaired.png")

        # the health page, from the list's object tools
        browser.get(f"{url}/admin/generation/generationstatus/")
        browser.find_element(By.CSS_SELECTOR, ".object-tools a[href$='/health/']").click()
        wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "svg.gen-chart")))
        assert browser.find_element(By.TAG_NAME, "h1").text == "Generation health"
        bars = browser.find_elements(By.CSS_SELECTOR, "svg.gen-chart rect")
        assert len(bars) > 30
        assert browser.find_element(By.ID, "gen-stuck-total").text.isdigit()
        screenshot(browser, "health.png")

        # releasing expired locks: the confirmation flags a lock whose batch still moves; "No" changes nothing
        browser.get(f"{url}/admin/generation/generationlock/?expired=yes")
        rows = browser.find_elements(By.CSS_SELECTOR, "#result_list tbody tr")
        moving = [row for row in rows if row.find_elements(By.CSS_SELECTOR, "td.field-batch .gen-flag-note")]
        still = [row for row in rows if not row.find_elements(By.CSS_SELECTOR, "td.field-batch .gen-flag-note")]
        assert moving, "the demo data has expired locks of batches still progressing"
        for row in [moving[0], *still[:3]]:
            row.find_element(By.CSS_SELECTOR, "input.action-select").click()
        Select(browser.find_element(By.NAME, "action")).select_by_value("release_selected")
        browser.find_element(By.CSS_SELECTOR, "button[name=index]").click()
        warning = wait.until(ec.presence_of_element_located((By.ID, "gen-progressing")))
        assert warning.text.startswith("1 lock belongs to a batch that is still progressing")
        assert len(browser.find_elements(By.CSS_SELECTOR, "#gen-locks tr.gen-flag")) == 1
        assert len(browser.find_elements(By.CSS_SELECTOR, "#gen-locks tbody tr")) == 4
        locks_before = GenerationLock.objects.count()
        screenshot(browser, "release-locks-confirmation.png")
        browser.find_element(By.CSS_SELECTOR, "#gen-confirm-form a.cancel-link").click()
        wait.until(ec.url_contains("expired=yes"))
        assert GenerationLock.objects.count() == locks_before
