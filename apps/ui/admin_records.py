"""What every admin page of a record (an audit trail: decisions, episodes) has in common."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse


class RecordPageMixin:
    """A record's page is read, not edited: no Save button and no Delete link (a record goes
    only with what owns it, from that owner's deletion page)."""

    def change_view(
        self,
        request: HttpRequest,
        object_id: str,
        form_url: str = "",
        extra_context: dict | None = None,
    ) -> HttpResponse:
        context = {**(extra_context or {}), "show_delete": False}
        return super().change_view(request, object_id, form_url, context)  # type: ignore[misc]
