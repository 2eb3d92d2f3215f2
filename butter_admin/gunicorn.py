"""gunicorn's configuration: `gunicorn --config python:butter_admin.gunicorn` serves the admin.

The image's web process (deploy/kubernetes/web-deployment.yaml) and a local production run (README,
"Running in production") use this one file; the environment changes what differs between them.
Command-line options and GUNICORN_CMD_ARGS override it, as gunicorn documents.
"""

import os

wsgi_app = "butter_admin.wsgi:application"
# The image sets WEB_BIND=0.0.0.0:8000 (the container's own network); elsewhere loopback unless told.
bind = [os.environ.get("WEB_BIND", "127.0.0.1:8000")]
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
# An admin action handles at most 500 rows per confirmation: well inside a minute.
timeout = 60
graceful_timeout = 30
# One line per request on stdout, errors on stderr: the container's log streams.
accesslog = "-"
errorlog = "-"
# The container's root filesystem is read-only and HOME does not exist: no control socket, and the
# workers' heartbeat files in memory (/dev/shm) where there is one.
control_socket_disable = True
worker_tmp_dir = "/dev/shm" if os.path.isdir("/dev/shm") else None  # noqa: S108 - memory, not a shared /tmp
