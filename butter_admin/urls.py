from django.contrib import admin
from django.urls import path

from butter_admin import probes
from generation.views import metrics_view

urlpatterns = [
    path("admin/", admin.site.urls),
    path("health/live", probes.live, name="health-live"),
    path("health/ready", probes.ready, name="health-ready"),
]

# Prometheus (README, "Monitoring"): bearer token or staff session.
urlpatterns += [path("metrics", metrics_view, name="metrics")]
