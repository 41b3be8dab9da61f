"""WhatsApp Cloud templates: the approved templates of the WhatsApp Business
Account (`GET {api_base}/{business_account_id}/message_templates`, every page),
and the `template` a queued message holds to send one.

A template's body text holds placeholders, `{{1}}`, `{{2}}`, ... (or named ones,
`{{first_name}}`); the agent fills them in the order they first appear. Only the
body's placeholders are offered: a template whose header or buttons take
parameters too is listed with those it needs in the body only.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import aiohttp
from pydantic import BaseModel, ConfigDict, ValidationError

from channels.base import MessageTemplate, PermanentSendError, TransientSendError
from channels.whatsapp.settings import WhatsAppSettings

PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z0-9_]+)\s*\}\}")
PAGE_SIZE = 100
MAX_PAGES = 20  # 2,000 templates: far more than an account is allowed


class _Component(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: str
    text: str | None = None


class _Template(BaseModel):
    model_config = ConfigDict(extra="ignore", coerce_numbers_to_str=True)
    name: str
    language: str
    status: str = ""
    category: str = ""
    components: list[_Component] = []


class _Cursors(BaseModel):
    model_config = ConfigDict(extra="ignore")
    after: str | None = None


class _Paging(BaseModel):
    model_config = ConfigDict(extra="ignore")
    cursors: _Cursors | None = None
    next: str | None = None


class _Page(BaseModel):
    model_config = ConfigDict(extra="ignore")
    data: list[_Template]
    paging: _Paging | None = None


def placeholders(body: str) -> tuple[str, ...]:
    """The names of the placeholders of `body`, each once, in order of appearance."""
    seen: list[str] = []
    for name in PLACEHOLDER.findall(body):
        if name not in seen:
            seen.append(name)
    return tuple(seen)


def fill(body: str, names: Sequence[str], values: Sequence[str]) -> str:
    """`body` with each placeholder replaced by its value."""
    given = dict(zip(names, values, strict=True))
    return PLACEHOLDER.sub(lambda m: given.get(m.group(1), m.group(0)), body)


async def approved(
    settings: WhatsAppSettings, http: aiohttp.ClientSession
) -> list[MessageTemplate] | None:
    """The account's approved templates; None when the inbox names no account."""
    if not settings.business_account_id:
        return None
    url: str | None = f"{settings.api_base}/{settings.business_account_id}/message_templates"
    params: dict[str, str] | None = {
        "status": "APPROVED",
        "limit": str(PAGE_SIZE),
        "fields": "name,language,status,category,components",
    }
    headers = {"Authorization": f"Bearer {settings.access_token}"}
    found: list[MessageTemplate] = []
    for _ in range(MAX_PAGES):
        if url is None:
            break
        try:
            async with http.get(url, params=params, headers=headers) as response:
                status = response.status
                raw = await response.read()
        except (aiohttp.ClientError, TimeoutError) as error:
            raise TransientSendError(
                f"cannot read the templates from the Graph API: {type(error).__name__}",
                maybe_sent=False,
            ) from error
        if status != 200:
            raise PermanentSendError(
                f"the Graph API answered HTTP {status} for the templates of account "
                f"{settings.business_account_id}",
                code=str(status),
            )
        try:
            page = _Page.model_validate_json(raw)
        except ValidationError:
            raise PermanentSendError("the Graph API's template list is unreadable") from None
        for item in page.data:
            if item.status.upper() != "APPROVED":
                continue
            body = next((c.text or "" for c in item.components if c.type.upper() == "BODY"), "")
            found.append(
                MessageTemplate(
                    name=item.name,
                    language=item.language,
                    category=item.category.upper(),
                    body=body,
                    parameters=placeholders(body),
                )
            )
        # Graph's `next` is a whole URL (with the query); follow it as given.
        url = page.paging.next if page.paging else None
        params = None
    return found


def template_message(template: MessageTemplate, parameters: Sequence[str]) -> dict[str, Any]:
    """The `template` of a queued message (`wire.TemplateSpec`) sending `template`."""
    message: dict[str, Any] = {"name": template.name, "language": template.language}
    if parameters:
        values: list[dict[str, Any]] = []
        for name, value in zip(template.parameters, parameters, strict=True):
            part: dict[str, Any] = {"type": "text", "text": value}
            if not name.isdigit():
                part["parameter_name"] = name
            values.append(part)
        message["components"] = [{"type": "body", "parameters": values}]
    return message
