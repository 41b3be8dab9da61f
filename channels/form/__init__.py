"""Website and landing-page lead forms.

`POST /webhooks/forms/{inbox}` takes the fields of one submission as a JSON
object, `application/x-www-form-urlencoded` or `multipart/form-data`, signed with
`X-Signature: sha256=<hex HMAC-SHA256 of the raw body with the inbox's secret>`
(so it is posted by the site's back end or a relay, never by the browser, which
would have to hold the secret).

`name`, `phone`, `email` and `message` are the lead's own (any may be missing,
but not both phone and e-mail); every other field is stored in the contact's
`attributes`. The contact is found or created by phone (else e-mail), given the
other identity too, and a `form` message is ingested so a conversation opens at
once. A resend of one submission (same submission id field, or the same fields)
is stored once.
"""

from __future__ import annotations

import email.parser
import email.policy
import hashlib
import json
import re
from collections.abc import Iterable
from datetime import datetime
from typing import Any
from urllib.parse import parse_qsl

from aiohttp import web
from pydantic import Field

from channels.base import ChannelAdapter, ChannelSettings, MalformedPayload, PermanentSendError
from channels.signing import verified_body
from hub.addresses import InvalidIdentity, email_ref, phone_ref
from hub.jsontext import UnreadableJson, parse_json
from hub.model import IdentityRef, InboundText, OutboundMessage, SendResult

NO_REPLY_REASON = (
    "a web form cannot carry a reply: answer the lead from an SMS, WhatsApp or "
    "e-mail inbox (the contact holds the phone and e-mail the form gave)"
)

# Field names become keys of `attributes` in the store: no dots, no `$`, nothing
# a query could read as an operator or a path.
FIELD_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_\- ]{0,63}$")
LEAD_FIELDS = ("name", "phone", "email", "message")


class FormSettings(ChannelSettings):
    # The HMAC key the site's back end signs every submission with.
    secret: str = Field(min_length=16, json_schema_extra={"secret": True})
    # A field carrying the form's own submission id: a resend with the same id is
    # stored once. Without it, the same fields are the same submission.
    id_field: str = "submission_id"
    # Caps: more attribute fields, or a longer value, is refused with a 400.
    max_fields: int = Field(default=30, ge=0, le=200)
    max_field_length: int = Field(default=500, ge=1, le=10_000)
    max_message_length: int = Field(default=5000, ge=1, le=100_000)
    max_body_bytes: int = Field(default=64 * 1024, ge=1024, le=4 * 1024 * 1024)
    # When not empty, only these other fields are kept as attributes (the rest
    # are dropped); `ignored_fields` are always dropped (captcha tokens).
    allowed_fields: tuple[str, ...] = ()
    ignored_fields: tuple[str, ...] = (
        "g-recaptcha-response",
        "h-captcha-response",
        "cf-turnstile-response",
    )


class FormError(ValueError):
    """A submission that is not one (answered 400 with this message)."""


# -- reading the body into (name, value) pairs ------------------------------------------


def _scalar(name: str, value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str | int | float):
        return str(value)
    raise FormError(f"{name}: must be a string, a number or a list of them")


def _json_pairs(body: bytes) -> list[tuple[str, str]]:
    try:
        payload = parse_json(body)
    except UnreadableJson as error:
        raise FormError(str(error)) from None
    if not isinstance(payload, dict):
        raise FormError("the body must be a JSON object of fields")
    pairs: list[tuple[str, str]] = []
    for name, value in payload.items():
        items = value if isinstance(value, list) else [value]
        for item in items:
            text = _scalar(name, item)
            if text is not None:
                pairs.append((name, text))
    return pairs


def _urlencoded_pairs(body: bytes) -> list[tuple[str, str]]:
    try:
        return parse_qsl(body.decode("utf-8"), keep_blank_values=True, strict_parsing=bool(body))
    except (UnicodeDecodeError, ValueError):
        raise FormError("the body is not a URL-encoded form") from None


def _multipart_pairs(content_type: str, body: bytes) -> list[tuple[str, str]]:
    head = f"Content-Type: {content_type}\r\n\r\n".encode("latin-1", "replace")
    parsed = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + body)
    if not parsed.is_multipart() or parsed.defects:
        raise FormError("the body is not a multipart form")
    pairs: list[tuple[str, str]] = []
    for part in parsed.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if not isinstance(name, str) or not name:
            raise FormError("a multipart part has no field name")
        if part.get_filename() is not None:
            raise FormError(f"{name}: files are not accepted")
        data = part.get_payload(decode=True)
        if not isinstance(data, bytes | None):
            raise FormError(f"{name}: a field cannot hold parts of its own")
        try:
            text = data.decode(part.get_content_charset() or "utf-8") if data else ""
        except (LookupError, UnicodeDecodeError):
            raise FormError(f"{name}: not valid text") from None
        pairs.append((name, text))
    return pairs


def form_fields(content_type: str, body: bytes) -> list[tuple[str, str]]:
    """The (name, value) pairs of a submission, in the order sent."""
    mime = content_type.split(";", 1)[0].strip().lower()
    if mime == "application/json" or mime.endswith("+json"):
        return _json_pairs(body)
    if mime == "application/x-www-form-urlencoded":
        return _urlencoded_pairs(body)
    if mime == "multipart/form-data":
        return _multipart_pairs(content_type, body)
    raise FormError(
        "Content-Type must be application/json, application/x-www-form-urlencoded "
        "or multipart/form-data"
    )


# -- a submission ---------------------------------------------------------------------


class Lead:
    """One validated submission: the lead's own fields and the rest as attributes."""

    def __init__(self, pairs: Iterable[tuple[str, str]], settings: FormSettings) -> None:
        own = {*LEAD_FIELDS, settings.id_field.lower()} - {""}
        allowed = set(settings.allowed_fields)
        ignored = set(settings.ignored_fields)
        self.lead: dict[str, str] = {}
        self.attributes: dict[str, str] = {}
        self.dropped: list[str] = []
        canonical: dict[str, list[str]] = {}
        for raw_name, raw_value in pairs:
            name = raw_name.strip()
            value = raw_value.strip()
            if name in ignored:
                continue
            if not FIELD_NAME.match(name):
                raise FormError(
                    f"field name {name[:64]!r}: use letters, digits, '_', '-' or spaces "
                    "(at most 64 characters)"
                )
            canonical.setdefault(name, []).append(value)
            key = name.lower()
            if key in own:
                if key in self.lead:
                    raise FormError(f"{key}: given more than once")
                limit = (
                    settings.max_message_length if key == "message" else settings.max_field_length
                )
                if len(value) > limit:
                    raise FormError(f"{key}: longer than {limit} characters")
                self.lead[key] = value
                continue
            if not value:
                continue  # an optional field left blank says nothing
            if allowed and name not in allowed:
                self.dropped.append(name)
                continue
            if len(value) > settings.max_field_length:
                raise FormError(f"{name}: longer than {settings.max_field_length} characters")
            # A repeated field (checkboxes) keeps every value.
            previous = self.attributes.get(name)
            self.attributes[name] = f"{previous}, {value}" if previous else value
            if len(self.attributes[name]) > settings.max_field_length:
                raise FormError(f"{name}: longer than {settings.max_field_length} characters")
        if len(self.attributes) > settings.max_fields:
            raise FormError(
                f"too many fields: {len(self.attributes)} besides name, phone, email and "
                f"message; at most {settings.max_fields}"
            )
        self.name = self.lead.get("name") or None
        self.message = self.lead.get("message") or None
        self.submission_id = self.lead.get(settings.id_field.lower()) or None
        # The same fields in any encoding (and any multipart boundary) are the
        # same submission.
        self.fingerprint = hashlib.sha256(
            # surrogatepass: a lone surrogate is a customer's typo, not a reason to fail
            json.dumps(sorted(canonical.items()), ensure_ascii=False).encode(
                "utf-8", "surrogatepass"
            )
        ).hexdigest()

    def identities(self, region: str) -> tuple[IdentityRef, list[IdentityRef]]:
        """The identity the contact is found by (phone, else e-mail) and the other."""
        phone = self.lead.get("phone") or None
        mail = self.lead.get("email") or None
        if not phone and not mail:
            raise FormError("phone or email: a lead needs at least one of them")
        refs: list[IdentityRef] = []
        try:
            if phone:
                refs.append(phone_ref(phone, region, self.name))
        except InvalidIdentity as error:
            raise FormError(f"phone: {error}") from None
        try:
            if mail:
                refs.append(email_ref(mail, self.name))
        except InvalidIdentity as error:
            raise FormError(f"email: {error}") from None
        return refs[0], refs[1:]

    def text(self, refs: Iterable[IdentityRef]) -> str:
        if self.message:
            return self.message
        parts = [self.name] if self.name else []
        parts.extend(ref.value for ref in refs)
        return "New lead: " + ", ".join(parts)

    @property
    def provider_id(self) -> str:
        if self.submission_id:
            return f"form:{self.submission_id[:400]}"
        return f"sha256:{self.fingerprint}"


class FormChannel(ChannelAdapter):
    name = "form"
    Settings = FormSettings
    settings: FormSettings

    @property
    def webhook_prefix(self) -> str:
        return f"/webhooks/forms/{self.inbox_id}"

    def routes(self) -> list[web.RouteDef]:
        return [web.post("", self.submit)]

    async def start(self) -> None:
        if not self.settings.secret:
            raise ValueError(f"{self.inbox_id}: secret is required to verify form submissions")

    def reply_refusal(self, last_inbound_at: datetime | None, template: bool) -> str | None:
        return NO_REPLY_REASON

    async def send(self, message: OutboundMessage) -> SendResult:
        raise PermanentSendError(NO_REPLY_REASON, code="no_reply")

    async def submit(self, request: web.Request) -> web.Response:
        body = await verified_body(request, self.settings.secret, self.settings.max_body_bytes)
        try:
            lead = Lead(form_fields(request.headers.get("Content-Type", ""), body), self.settings)
            primary, also = lead.identities(self.ctx.default_region)
        except FormError as error:
            raise MalformedPayload(str(error)) from None
        if lead.dropped:
            self.ctx.logger.info(
                "form fields dropped",
                extra={"inbox": self.inbox_id, "fields": sorted(lead.dropped)[:20]},
            )
        contact_id = await self.ctx.update_contact(
            primary, also=also, name=lead.name, attributes=lead.attributes
        )
        message = InboundText(
            inbox=self.inbox_id,
            medium="form",
            provider_id=lead.provider_id,
            sender=primary,
            text=lead.text([primary, *also]),
            extra=lead.attributes,
        )
        (result,) = await self.ctx.ingest([message])
        return web.json_response(
            {
                "ok": True,
                "contact_id": contact_id,
                "conversation_id": result.conversation_id,
                "message_id": result.message_id,
                "duplicate": result.duplicate,
            }
        )
