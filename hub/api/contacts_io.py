"""Contacts as CSV: import (supervisor) and export (supervisor).

Both move every contact at once, past the inbox access an agent has, so they need
the supervisor role. The import's body is the CSV itself (`text/csv`), at most
`MAX_IMPORT_BYTES`; a larger one gets 413 before anything is written.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from aiohttp import web
from pydantic import Field

from hub.api.base import ApiError, Call, RouteTable
from hub.api.schemas import Output
from hub.services.contacts_io import export_csv, import_csv
from hub.store import Store

table = RouteTable()

MAX_IMPORT_BYTES = 5 * 1024 * 1024
CSV_TYPES = frozenset({"text/csv", "application/csv", "text/plain"})


class RejectedRow(Output):
    row: int = Field(description="the line of the file; the header is line 1")
    reason: str


class ImportOut(Output):
    rows: int
    created: int
    merged: int
    rejected: int
    reasons: list[RejectedRow] = Field(description="why rows were rejected (the first 1000)")


def _store(call: Call) -> Store:
    assert call.hub.store is not None
    return call.hub.store


async def _read_capped(request: web.Request, limit: int) -> bytes:
    if request.content_length is not None and request.content_length > limit:
        raise ApiError(413, "too_large", f"the file may hold at most {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    while True:
        chunk = await request.content.readany()
        if not chunk:
            break
        size += len(chunk)
        if size > limit:
            raise ApiError(413, "too_large", f"the file may hold at most {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


@table.route(
    "POST",
    "/api/contacts/import",
    summary="Import contacts from a CSV body (text/csv): rows created, merged, rejected",
    role="supervisor",
    response=ImportOut,
)
async def import_contacts(call: Call) -> dict[str, Any]:
    request = call.request
    if request.content_type not in CSV_TYPES:
        raise ApiError(415, "unsupported_media_type", "send the CSV file as text/csv")
    raw = await _read_capped(request, MAX_IMPORT_BYTES)
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise ApiError(400, "invalid", "the file is not UTF-8 text") from None
    try:
        report = await import_csv(
            _store(call), text, default_region=call.hub.settings.identity.default_region
        )
    except ValueError as error:
        raise ApiError(400, "invalid", str(error)) from None
    await call.accounts.audit(
        call.me.agent_id,
        "contacts.imported",
        created=report.created,
        merged=report.merged,
        rejected=report.rejected,
    )
    return report.as_dict()


@table.route(
    "GET",
    "/api/contacts/export",
    summary="Every contact as CSV (the import's columns, one more per attribute)",
    role="supervisor",
)
async def export_contacts(call: Call) -> web.Response:
    text = await export_csv(_store(call))
    await call.accounts.audit(call.me.agent_id, "contacts.exported")
    stamp = datetime.now(UTC).strftime("%Y%m%d")
    return web.Response(
        body=text.encode(),
        content_type="text/csv",
        charset="utf-8",
        headers={"Content-Disposition": f'attachment; filename="contacts-{stamp}.csv"'},
    )
