from django.contrib import admin
from django.urls import path

from generation.views import metrics_view

urlpatterns = [
    path("admin/", admin.site.urls),
]

# Prometheus (README, "Monitoring"): bearer token or staff session.
urlpatterns += [path("metrics", metrics_view, name="metrics")]
