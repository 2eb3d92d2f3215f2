"""The admin's one way of writing a date and time, with the time zone (FORMAT_MODULE_PATH in settings.py): the
lists, the change pages' read-only fields and the health page all print 2026-03-01 14:05 UTC, never Django's
English default (March 1, 2026, 2:05 p.m.), which hides the zone."""

DATETIME_FORMAT = "Y-m-d H:i T"
SHORT_DATETIME_FORMAT = "Y-m-d H:i T"
DATE_FORMAT = "Y-m-d"
SHORT_DATE_FORMAT = "Y-m-d"
TIME_FORMAT = "H:i T"
