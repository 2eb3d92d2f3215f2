"""The original job's approach, written with the ORM for comparison only: read the candidates, then
for each one a separate UPDATE and a separate DELETE of its lock, then a DELETE per expired lock.

Each statement commits on its own (autocommit), as the original job's did. The decisions come from
rules.py, so the rows end up exactly as the command leaves them; what differs is the write pattern
(and this keeps no audit records, like the original). Run as a process, like the command:

    DATABASE_URL=postgres://... SECRET_KEY=x python benchmarks/per_row.py --stuck-after 3h --lock-ttl 3h
"""

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stuck-after", default="3h")
    parser.add_argument("--lock-ttl", default="3h")
    args = parser.parse_args(argv)

    sys.path.insert(0, str(ROOT))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "butter_admin.settings")
    import django

    django.setup()
    from django.db.models.functions import Now

    from generation import rules
    from generation.conf import parse_duration
    from generation.db import database_now
    from generation.models import GenerationLock, GenerationStatus

    started = time.monotonic()
    now = database_now()
    cutoff, lock_cutoff = now - parse_duration(args.stuck_after), now - parse_duration(args.lock_ttl)
    repaired = released = expired = 0
    candidates = list(GenerationStatus.objects.filter(status__in=rules.IN_PROGRESS, updated_at__lt=cutoff)
                      .order_by("id"))
    for row in candidates:
        decision = rules.decide(rules.Counters.of(row), row.status)
        if not decision.repairs:
            continue
        changes = {**decision.changes(), "updated_at": Now()}
        if decision.finishes:
            changes["completed_at"] = Now()
        GenerationStatus.objects.filter(pk=row.pk).update(**changes)
        repaired += 1
        if decision.finishes and row.lock_id:
            released += GenerationLock.objects.filter(lock_id=row.lock_id).delete()[0]
    for lock in list(GenerationLock.objects.filter(locked_at__lt=lock_cutoff).order_by("id")):
        expired += GenerationLock.objects.filter(pk=lock.pk).delete()[0]
    print(json.dumps({"repaired": repaired, "locks_released": released, "locks_expired": expired,
                      "duration_s": round(time.monotonic() - started, 3)}))


if __name__ == "__main__":
    main()
