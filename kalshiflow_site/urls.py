from django.contrib import admin
from django.urls import include, path

from apps.dashboard.views import throttled_admin_login

urlpatterns = [
    # Before the admin's own login/ route: failed passwords are throttled per address.
    path("admin/login/", throttled_admin_login),
    path("admin/", admin.site.urls),
    path("rl/", include("apps.dashboard.urls")),
]

# Under /rl/ a missing route or a crash answers JSON like the rest of the API.
handler404 = "apps.dashboard.api.errors.json_not_found"
handler500 = "apps.dashboard.api.errors.json_server_error"
