# One image for the project's processes (docs/operations.md, "Via Docker/Kubernetes"):
# - the cleanup job, the default command: runs `python manage.py cleanup_stuck_generation` once and
#   exits (0 ok or skipped, 1 errors found or database unreachable); deploy/kubernetes/cronjob.yaml
#   runs it every 30 minutes, deploy/kubernetes/migrate-job.yaml runs `migrate` and `setup_roles`;
# - the admin: `gunicorn --config python:butter_admin.gunicorn` (deploy/kubernetes/web-deployment.yaml),
#   serving the static files collected below itself (WhiteNoise).
# Configuration comes from the environment only (DATABASE_URL, SECRET_KEY, GENERATION_*, CLEANUP_*,
# the admin's ALLOWED_HOSTS etc.): no .env is copied in (.dockerignore).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
# Only the django-crontab schedule writes this file; in a container the log is stdout/stderr.
# /tmp keeps the log folder check (generation.W002) quiet; Kubernetes mounts an emptyDir there.
ENV CLEANUP_LOG_FILE=/tmp/cleanup.log
# The web process listens on the container's own network (gunicorn.py's default is loopback only).
ENV WEB_BIND=0.0.0.0:8000

WORKDIR /app

# The same install as `make` (.venv/.installed): the pinned runtime requirements, nothing else.
COPY requirements.txt ./
RUN pip install -r requirements.txt

COPY manage.py ./
COPY butter_admin/ butter_admin/
COPY generation/ generation/
# The project's bytecode, compiled once here: the processes may not write /app (and
# PYTHONDONTWRITEBYTECODE says not to), so without it every cleanup run compiled each module again.
RUN python -m compileall -q manage.py butter_admin generation

# The admin's CSS and JavaScript into /app/staticfiles (STATIC_ROOT) under content-hashed names, with
# gzip copies: built once here, read-only at run time. This key only lets the settings load for the
# build step; the running processes get theirs from the environment.
RUN SECRET_KEY=collectstatic-only python manage.py collectstatic --noinput --verbosity 0

# A numeric non-root user, so Kubernetes' runAsNonRoot can verify it.
RUN useradd --system --uid 10001 --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin butter
USER 10001

EXPOSE 8000

CMD ["python", "manage.py", "cleanup_stuck_generation"]
