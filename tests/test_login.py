"""Logging in to the admin: the lockout after failed attempts (django-axes), the unlock command, the client
address behind a proxy, and the session's idle expiry. Through the real login form (CSRF enforced)."""

import re
from datetime import timedelta
from io import StringIO

import pytest
from axes.models import AccessAttempt, AccessFailureLog
from django.contrib.sessions.models import Session
from django.core.management import call_command
from django.test import Client, RequestFactory
from django.urls import reverse
from django.utils import timezone

from butter_admin.client_ip import client_ip

pytestmark = pytest.mark.django_db

LOGIN_URL = reverse("admin:login")
INDEX_URL = reverse("admin:index")
RIGHT = "the-right-password-42"
WRONG = "a-wrong-password"
INVALID = "Please enter the correct username and password"


@pytest.fixture(autouse=True)
def plain_http(settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]  # test users, fast
    settings.SECURE_SSL_REDIRECT = False  # settings.py redirects to https with DEBUG off


@pytest.fixture
def alice(django_user_model):
    return django_user_model.objects.create_user("alice", password=RIGHT, is_staff=True)


def login(client, password, username="alice", **environ):
    """Fill in and submit the admin's login form as a browser does: GET it (CSRF cookie and token), POST it.
    `environ`: REMOTE_ADDR, HTTP_X_FORWARDED_FOR, ... as the server would see them."""
    page = client.get(LOGIN_URL, {"next": INDEX_URL}, **environ)
    assert page.status_code == 200
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.content.decode()).group(1)
    return client.post(LOGIN_URL, {"csrfmiddlewaretoken": token, "username": username, "password": password,
                                   "next": INDEX_URL}, **environ)


def logged_in(response):
    return response.status_code == 302 and response["Location"] == INDEX_URL


def browser():
    return Client(enforce_csrf_checks=True)


def lock_out(client=None):
    client = client or browser()
    return [login(client, WRONG) for _ in range(5)]


def locked(response):
    return response.status_code == 429 and "Login locked: too many failed attempts." in response.content.decode()


def test_five_wrong_passwords_lock_the_login_even_with_the_right_password(alice):
    client = browser()
    *first, fifth = lock_out(client)
    for response in first:
        assert response.status_code == 200 and INVALID in response.content.decode()
    assert locked(fifth)
    right = login(client, RIGHT)
    assert locked(right) and not logged_in(right)
    page = right.content.decode()
    assert "After 5 failed logins for <strong>alice</strong>" in page
    assert "for\n    15 minutes after the last failed attempt" in page
    assert "even with the right password" in page
    assert browser().get(INDEX_URL).status_code == 302  # nobody got in
    assert "_auth_user_id" not in client.session


def test_the_unlock_command_lets_the_user_in_again(alice):
    lock_out()
    assert locked(login(browser(), RIGHT))
    out = StringIO()
    call_command("axes_reset_username", "alice", stdout=out)
    assert out.getvalue() == "1 attempts removed.\n"
    assert logged_in(login(browser(), RIGHT))


def _attempt_made(ago):
    AccessAttempt.objects.filter(username="alice").update(attempt_time=timezone.now() - ago)


def test_the_lockout_ends_after_the_cool_off_and_refused_attempts_do_not_extend_it(alice):
    lock_out()
    _attempt_made(timedelta(minutes=14, seconds=30))  # half a minute inside the 15-minute cool-off
    before = AccessAttempt.objects.get().attempt_time
    assert locked(login(browser(), RIGHT))
    assert locked(login(browser(), WRONG))
    assert AccessAttempt.objects.get().attempt_time == before  # refused attempts are not counted again
    _attempt_made(timedelta(minutes=15, seconds=1))  # a second past it
    assert logged_in(login(browser(), RIGHT))
    assert not AccessAttempt.objects.exists()  # a successful login clears the failures


def test_failures_below_the_limit_are_forgotten_after_a_successful_login(alice):
    client = browser()
    for _ in range(4):
        login(client, WRONG)
    assert logged_in(login(browser(), RIGHT))
    client = browser()
    assert [login(client, WRONG).status_code for _ in range(4)] == [200] * 4
    assert logged_in(login(browser(), RIGHT))


def test_the_lockout_is_per_username_and_address(alice, django_user_model):
    django_user_model.objects.create_user("bob", password=RIGHT, is_staff=True)
    lock_out()
    assert logged_in(login(browser(), RIGHT, username="bob"))  # another user from the same address
    assert logged_in(login(browser(), RIGHT, REMOTE_ADDR="192.0.2.10"))  # the same user from another address


def test_the_limit_and_cool_off_come_from_the_settings(alice, settings):
    settings.AXES_FAILURE_LIMIT = 2
    settings.AXES_COOLOFF_TIME = timedelta(minutes=30)
    client = browser()
    assert login(client, WRONG).status_code == 200
    response = login(client, WRONG)
    assert locked(response) and "After 2 failed logins" in response.content.decode()
    assert "30 minutes after the last failed attempt" in " ".join(response.content.decode().split())
    _attempt_made(timedelta(minutes=29))
    assert locked(login(browser(), RIGHT))


def test_attempts_and_lockouts_are_listed_in_the_admin_without_the_password(alice, admin_client):
    lock_out()
    login(browser(), RIGHT)  # refused
    [attempt] = AccessAttempt.objects.all()
    assert (attempt.username, attempt.ip_address, attempt.failures_since_start) == ("alice", "127.0.0.1", 5)
    assert WRONG not in attempt.post_data and RIGHT not in attempt.post_data
    page = admin_client.get(reverse("admin:axes_accessattempt_changelist") + "?locked_out=yes").content.decode()
    assert "alice" in page and "Locked Out" in page
    failures = AccessFailureLog.objects.filter(username="alice").order_by("attempt_time")
    assert [f.locked_out for f in failures] == [False] * 4 + [True]
    page = admin_client.get(reverse("admin:axes_accessfailurelog_changelist")).content.decode()
    assert page.count("alice") >= 5


# --- The client address: the TCP peer, or behind a proxy only the header it writes ---------------------


def test_without_a_configured_header_a_forwarded_for_header_changes_nothing(alice):
    client = browser()
    for n in range(5):  # a client inventing a new address on every attempt
        login(client, WRONG, HTTP_X_FORWARDED_FOR=f"198.51.100.{n}")
    assert locked(login(browser(), RIGHT, HTTP_X_FORWARDED_FOR="198.51.100.99"))
    assert set(AccessAttempt.objects.values_list("ip_address", flat=True)) == {"127.0.0.1"}


def test_behind_a_proxy_the_address_is_the_one_the_proxy_appended(alice, settings):
    settings.CLIENT_IP_HEADER = "X-Forwarded-For"
    client = browser()
    for n in range(5):  # what the client wrote varies; what the proxy appended does not
        login(client, WRONG, HTTP_X_FORWARDED_FOR=f"198.51.100.{n}, 203.0.113.7")
    assert set(AccessAttempt.objects.values_list("ip_address", flat=True)) == {"203.0.113.7"}
    assert locked(login(browser(), RIGHT, HTTP_X_FORWARDED_FOR="203.0.113.7"))
    assert logged_in(login(browser(), RIGHT, HTTP_X_FORWARDED_FOR="203.0.113.7, 203.0.113.8"))  # another client


@pytest.mark.parametrize(("header", "count", "meta", "expected"), [
    ("", 1, {"REMOTE_ADDR": "10.0.0.5", "HTTP_X_FORWARDED_FOR": "198.51.100.1"}, "10.0.0.5"),
    ("X-Forwarded-For", 1, {"REMOTE_ADDR": "10.0.0.5", "HTTP_X_FORWARDED_FOR": "198.51.100.1"}, "198.51.100.1"),
    ("X-Forwarded-For", 1, {"HTTP_X_FORWARDED_FOR": "1.1.1.1, 198.51.100.1"}, "198.51.100.1"),
    ("X-Forwarded-For", 2, {"HTTP_X_FORWARDED_FOR": "1.1.1.1, 198.51.100.1, 10.0.0.9"}, "198.51.100.1"),
    ("X-Forwarded-For", 2, {"HTTP_X_FORWARDED_FOR": "198.51.100.1"}, None),  # fewer entries than proxies
    ("X-Forwarded-For", 1, {"REMOTE_ADDR": "10.0.0.5"}, None),  # the header missing: never REMOTE_ADDR
    ("X-Forwarded-For", 1, {"HTTP_X_FORWARDED_FOR": "1.1.1.1, not-an-address"}, None),
    ("X-Forwarded-For", 1, {"HTTP_X_FORWARDED_FOR": "1.1.1.1, "}, None),
    ("X-Real-IP", 1, {"HTTP_X_REAL_IP": "2001:db8::1", "HTTP_X_FORWARDED_FOR": "1.1.1.1"}, "2001:db8::1"),
])
def test_client_ip(settings, header, count, meta, expected):
    settings.CLIENT_IP_HEADER, settings.CLIENT_IP_PROXY_COUNT = header, count
    assert client_ip(RequestFactory().get("/", **meta)) == expected


# --- Sessions end after SESSION_IDLE_TIMEOUT without a request -------------------------------------------


def _session_expires_in(client, delta):
    Session.objects.filter(pk=client.session.session_key).update(expire_date=timezone.now() + delta)


def test_each_request_renews_the_session_and_an_idle_one_ends(alice, settings):
    assert settings.SESSION_COOKIE_AGE == 8 * 3600
    client = browser()
    assert logged_in(login(client, RIGHT))
    _session_expires_in(client, timedelta(minutes=1))
    assert client.get(INDEX_URL).status_code == 200
    expires = Session.objects.get(pk=client.session.session_key).expire_date
    assert timedelta(hours=7, minutes=59) < expires - timezone.now() <= timedelta(hours=8)
    _session_expires_in(client, -timedelta(seconds=1))  # eight hours without a request
    response = client.get(INDEX_URL)
    assert response.status_code == 302 and response["Location"].startswith(LOGIN_URL)
