"""The agent API's interactive docs (Swagger UI from django-ninja), for staff only.

The page is django-ninja's own template with the Swagger UI files django-ninja ships
(`ninja` is in INSTALLED_APPS, so nothing is fetched from a CDN and the page works in an
air-gapped admin). It reads the same OpenAPI document as /api/schema/. Staff only: the
schema is public knowledge, but a page that sends requests with an agent key is an
operator's tool, not something to leave open to the internet.
"""

from __future__ import annotations

from typing import Any

from django.contrib.admin.views.decorators import staff_member_required
from django.http import HttpRequest, HttpResponse
from django.urls import reverse
from ninja import NinjaAPI
from ninja.openapi.docs import Swagger

from controlplane.api.api import api


class _SchemaSwagger(Swagger):
    """Swagger UI pointed at /api/schema/ (the API serves its schema outside ninja's router)."""

    def get_openapi_url(self, api: NinjaAPI, path_params: dict[str, Any]) -> str:
        return reverse("api-schema")


_swagger = _SchemaSwagger(settings={"persistAuthorization": False, "tryItOutEnabled": True})


@staff_member_required
def api_docs(request: HttpRequest) -> HttpResponse:
    """Interactive docs of the agent API: staff only; anonymous users go to the admin login."""
    return _swagger.render_page(request, api)
