from django.contrib import admin
from django.urls import path

from butter_admin import probes

urlpatterns = [
    path("admin/", admin.site.urls),
    path("health/live", probes.live, name="health-live"),
    path("health/ready", probes.ready, name="health-ready"),
]
