"""Twilio's Content API: the approved WhatsApp templates of the account
(`GET {content_api_base}/v1/ContentAndApprovals`, every page), and the
`template` a queued message holds to send one (`ContentSid` and
`ContentVariables` on the Messages API call, `rest.message_fields`).

A content's text (its `twilio/text` body, or the body of whichever type it has)
holds placeholders `{{1}}`, `{{2}}`, ...; the agent fills them in order of first
appearance and they go as `ContentVariables` `{"1": ..., "2": ...}`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import aiohttp
from pydantic import BaseModel, ConfigDict, ValidationError

from channels.base import MessageTemplate, PermanentSendError, TransientSendError
from channels.twilio.settings import TwilioSettings

PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z0-9_]+)\s*\}\}")
PAGE_SIZE = 200
MAX_PAGES = 20


class _Approval(BaseModel):
    model_config = ConfigDict(extra="ignore")
    name: str | None = None
    category: str | None = None
    status: str | None = None


class _Content(BaseModel):
    model_config = ConfigDict(extra="ignore")
    sid: str
    friendly_name: str | None = None
    language: str = ""
    types: dict[str, Any] = {}
    approval_requests: _Approval | None = None


class _Meta(BaseModel):
    model_config = ConfigDict(extra="ignore")
    next_page_url: str | None = None


class _Page(BaseModel):
    model_config = ConfigDict(extra="ignore")
    contents: list[_Content]
    meta: _Meta | None = None


def placeholders(body: str) -> tuple[str, ...]:
    seen: list[str] = []
    for name in PLACEHOLDER.findall(body):
        if name not in seen:
            seen.append(name)
    return tuple(seen)


def _body(types: dict[str, Any]) -> str:
    for kind in ("twilio/text", *sorted(types)):
        part = types.get(kind)
        if isinstance(part, dict) and isinstance(part.get("body"), str):
            return str(part["body"])
    return ""


async def approved(
    settings: TwilioSettings, authorization: str, http: aiohttp.ClientSession
) -> list[MessageTemplate]:
    """The account's contents approved for WhatsApp."""
    url: str | None = f"{settings.content_base}/v1/ContentAndApprovals"
    params: dict[str, str] | None = {"PageSize": str(PAGE_SIZE)}
    headers = {"Authorization": authorization, "Accept": "application/json"}
    found: list[MessageTemplate] = []
    for _ in range(MAX_PAGES):
        if url is None:
            break
        try:
            async with http.get(
                url,
                params=params,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=settings.send_timeout),
            ) as response:
                status = response.status
                raw = await response.read()
        except (aiohttp.ClientError, TimeoutError) as error:
            raise TransientSendError(
                f"cannot read the templates from Twilio's Content API: {type(error).__name__}",
                maybe_sent=False,
            ) from error
        if status != 200:
            raise PermanentSendError(
                f"Twilio's Content API answered HTTP {status} for the templates",
                code=str(status),
            )
        try:
            page = _Page.model_validate_json(raw)
        except ValidationError:
            raise PermanentSendError("Twilio's Content API list is unreadable") from None
        for item in page.contents:
            approval = item.approval_requests
            if approval is None or (approval.status or "").lower() != "approved":
                continue
            body = _body(item.types)
            found.append(
                MessageTemplate(
                    name=approval.name or item.friendly_name or item.sid,
                    language=item.language,
                    category=(approval.category or "").upper(),
                    body=body,
                    parameters=placeholders(body),
                    ref=item.sid,
                )
            )
        url = page.meta.next_page_url if page.meta else None
        params = None
    return found


def template_message(template: MessageTemplate, parameters: Sequence[str]) -> dict[str, Any]:
    """The `template` of a queued message: the content SID and its variables."""
    message: dict[str, Any] = {
        "name": template.name,
        "language": template.language,
        "content_sid": template.ref,
    }
    if parameters:
        message["variables"] = dict(zip(template.parameters, parameters, strict=True))
    return message
