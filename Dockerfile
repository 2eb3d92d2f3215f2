# The cleanup job in a container: runs `python manage.py cleanup_stuck_generation` once and exits
# (0 ok or skipped, 1 errors found or database unreachable). deploy/kubernetes/cronjob.yaml runs it
# every 30 minutes; deploy/kubernetes/migrate-job.yaml runs `migrate --fake-initial` with it.
# Configuration comes from the environment only (DATABASE_URL, SECRET_KEY, GENERATION_*, CLEANUP_*):
# no .env is copied in (.dockerignore).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
# Only the django-crontab schedule writes this file; in a container the log is stdout/stderr.
# /tmp keeps the log folder check (generation.W002) quiet; Kubernetes mounts an emptyDir there.
ENV CLEANUP_LOG_FILE=/tmp/cleanup.log

WORKDIR /app

# The same install as `make` (.venv/.installed): the pinned runtime requirements, nothing else.
COPY requirements.txt ./
RUN pip install -r requirements.txt

COPY manage.py ./
COPY butter_admin/ butter_admin/
COPY generation/ generation/

# A numeric non-root user, so Kubernetes' runAsNonRoot can verify it.
RUN useradd --system --uid 10001 --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin butter
USER 10001

CMD ["python", "manage.py", "cleanup_stuck_generation"]
