"""A test run leaves the checkout as git sees it: what tests write goes to folders git ignores."""

import os
import subprocess

import pytest

from .helpers import ROOT, user_environment


def git(*args):
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=60)


@pytest.fixture
def git_checkout():
    if git("rev-parse", "--is-inside-work-tree").stdout.strip() != "true":
        pytest.skip("the project is not a git checkout here")


def test_the_browser_tests_screenshots_go_to_a_folder_git_ignores(git_checkout):
    from .test_browser import SCREENSHOTS

    if "SCREENSHOT_DIR" not in os.environ:
        assert SCREENSHOTS == ROOT / "artifacts" / "screenshots"
        ignored = git("check-ignore", "--no-index", str(SCREENSHOTS / "health.png"))
        assert ignored.returncode == 0, f"{SCREENSHOTS} is not ignored by git: a test run would dirty the checkout"
    # the README's pictures are tracked, and refreshed only on purpose
    assert git("ls-files", "--error-unmatch", "docs/screenshots/health.png").returncode == 0


def test_make_screenshots_refreshes_the_readme_pictures():
    planned = subprocess.run(["make", "-n", "screenshots"], cwd=ROOT, env=user_environment(), capture_output=True,
                             text=True, timeout=60)
    assert planned.returncode == 0, planned.stderr
    assert "SCREENSHOT_DIR=docs/screenshots .venv/bin/pytest -m browser tests/test_browser.py" in planned.stdout


def test_the_readme_shows_one_picture_per_admin_page_and_no_other(git_checkout):
    from .test_browser import PICTURES

    tracked = set(git("ls-files", "docs/screenshots").stdout.split())
    assert tracked == {f"docs/screenshots/{name}" for name in PICTURES}
    readme = (ROOT / "README.md").read_text()
    assert [name for name in PICTURES if f"(docs/screenshots/{name})" not in readme] == []
