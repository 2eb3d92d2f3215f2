"""The Kubernetes probes (deploy/kubernetes/web-deployment.yaml): anonymous, no session, no template.

/health/live: the process answers requests (liveness: a database outage must not restart every pod).
/health/ready: and the database answers `SELECT 1` (readiness: no traffic to a pod that cannot reach it).
"""

from django.db import DatabaseError, connection
from django.http import HttpResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_safe


def _plain(text, status=200):
    return HttpResponse(text + "\n", status=status, content_type="text/plain")


@never_cache
@require_safe
def live(request):
    return _plain("ok")


@never_cache
@require_safe
def ready(request):
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
    except DatabaseError:
        # never the error text: it can name the host and user; the server log has the request
        return _plain("database unavailable", status=503)
    return _plain("ok")
