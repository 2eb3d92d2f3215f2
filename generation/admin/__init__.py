"""The admin: list pages, filters and actions over services (repairs) and selectors (read-only queries).

No repair is computed here. The actions call services.repair_selected(), services.release_locks() and
undo.undo_records() (whose dry run is the confirmation page's preview), which record every change as a
RepairRecord in a CleanupRun with trigger `admin` and the acting user; the admin adds Django's own
LogEntry for each changed row and tells the user what happened, naming the rows and linking the run.

The mirrored tables belong to the backend: nobody adds, edits or deletes their rows here, because a
free edit would bypass the audit trail the repairs keep.

One module per page, as Django's contrib.admin splits options, actions and filters: statuses (with the health
page), locks, runs, records (with the undo), and what they share (common).
"""

from django.contrib import admin

from . import locks, records, runs, statuses  # noqa: F401 - each registers its ModelAdmins

# The admin's own admin/index.html is found before ours (django.contrib.admin precedes generation in
# INSTALLED_APPS), so the index (the Health link, the stuck and expired counts) comes through index_template.
admin.site.index_template = "admin/generation/index.html"
# Titled for this product; no "View site" link: there is no site beside the admin (the health page is linked
# from the index and from the statuses list).
admin.site.site_header = "butter_admin: generation cleanup"
admin.site.site_title = "butter_admin"
admin.site.index_title = "Generation cleanup"
admin.site.site_url = None
