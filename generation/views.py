"""/metrics for Prometheus: who may read it, and one line instead of a traceback when the database is down.

Readable with `Authorization: Bearer <METRICS_TOKEN>` (compared in constant time) or by a logged-in staff
user; anyone else gets 401 (no credentials) or 403 (wrong ones), and no data.
"""

import hmac

from django.core.exceptions import ImproperlyConfigured
from django.db import DatabaseError
from django.http import HttpResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_safe

from .conf import monitoring_settings
from .db import database_name, one_line


def _text(status, line, **headers):
    return HttpResponse(line + "\n", status=status, content_type="text/plain; charset=utf-8", headers=headers)


def _refusal(request, token):
    """None if the request may read the metrics, else the response that says why not."""
    scheme, _, presented = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "bearer" and presented.strip():
        # compare_digest: the time taken says nothing about how much of the token was right
        if token and hmac.compare_digest(presented.strip().encode(), token.encode()):
            return None
        return _text(403, "forbidden: wrong token" if token else "forbidden: METRICS_TOKEN is not set")
    user = request.user  # the session: the one place this view reads the database before the metrics
    if user.is_authenticated:
        return None if user.is_active and user.is_staff else _text(403, "forbidden: staff only")
    return _text(401, "unauthorized: send Authorization: Bearer <METRICS_TOKEN>, or log in as staff",
                 **{"WWW-Authenticate": 'Bearer realm="metrics"'})


@require_safe
@never_cache
def metrics_view(request):
    # imported here: every manage.py command imports this module (the URL checks), and the cleanup's cron run
    # must not pay for loading prometheus_client (~10 ms) that only a scrape uses
    from . import metrics

    try:
        refusal = _refusal(request, monitoring_settings().metrics_token)
        if refusal is not None:
            return refusal
        body, content_type = metrics.exposition(accept=request.headers.get("Accept"))
    except DatabaseError as exc:
        return _text(503, f"metrics unavailable: cannot read the {database_name()}: {one_line(exc)}")
    except ImproperlyConfigured as exc:  # a server started without the system checks (they name it too)
        return _text(503, f"metrics unavailable: {exc}")
    return HttpResponse(body, content_type=content_type)
