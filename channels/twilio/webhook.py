"""What every Twilio webhook route shares: the signed form, the form's fields, the
caller's phone, and the answers (TwiML or an empty body).

Each room (`messaging`, `voice`) classifies a request of its routes into one event
type and maps each event type to the function that handles it (None: known and
ignored). A handler is a plain function of the inbox (`TwilioInbox`, which the
adapter is), the request and its verified form.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Awaitable, Callable, Mapping
from typing import Protocol

from aiohttp import web
from multidict import MultiDict
from twilio.request_validator import RequestValidator
from twilio.twiml.messaging_response import MessagingResponse
from twilio.twiml.voice_response import VoiceResponse

from channels.base import ChannelContext, MalformedPayload
from channels.signing import read_limited
from channels.twilio.settings import TwilioSettings
from hub.addresses import InvalidIdentity, phone_ref
from hub.model import IdentityRef

SIGNATURE_HEADER = "X-Twilio-Signature"
MAX_BODY = 256 * 1024  # Twilio's webhooks are a few KB; this is generous

# What Twilio puts in `From` when the caller withholds their number: keypad
# spellings of ANONYMOUS, RESTRICTED, UNAVAILABLE, UNKNOWN and BLOCKED. They look
# like phone numbers but are no one's, so they must never become a contact.
WITHHELD_CALLERS = frozenset({"+266696687", "+7378742833", "+86282452253", "+8656696", "+2562533"})


class TwilioInbox(Protocol):
    """What a handler uses of the adapter: its inbox, settings, context and URLs."""

    inbox_id: str
    settings: TwilioSettings
    ctx: ChannelContext

    def url(self, path: str) -> str:
        """The public URL of one of this inbox's routes (what Twilio calls)."""
        ...


# An event's handler: the inbox, the request and its verified form.
Handler = Callable[[TwilioInbox, web.Request, MultiDict[str]], Awaitable[web.Response]]
# A route's classifier: the event type of its verified form.
Classifier = Callable[[Mapping[str, str]], str]
# An answer that acknowledges without doing anything.
Acknowledge = Callable[[], web.Response]


# --- the request ---------------------------------------------------------------------


async def verified_form(
    request: web.Request, validator: RequestValidator, public_url: str
) -> MultiDict[str]:
    """The form parameters of a request Twilio signed; 403 otherwise."""
    signature = request.headers.get(SIGNATURE_HEADER)
    if not signature:
        raise web.HTTPForbidden(text=f"missing {SIGNATURE_HEADER}")
    body = await read_limited(request, MAX_BODY)
    try:
        pairs = urllib.parse.parse_qsl(
            body.decode("utf-8"),
            keep_blank_values=True,
            strict_parsing=True,
            max_num_fields=1000,
        )
    except (UnicodeDecodeError, ValueError):
        raise MalformedPayload("the body is not a form") from None
    form: MultiDict[str] = MultiDict(pairs)
    # Twilio signs the URL it called: our public URL, never the Host we see.
    called = public_url + request.raw_path
    if not validator.validate(called, form, signature):
        raise web.HTTPForbidden(text=f"bad {SIGNATURE_HEADER}")
    return form


def first(form: Mapping[str, str], *names: str) -> str:
    """The first of `names` the form has a value for ("" when none)."""
    for name in names:
        value = form.get(name)
        if value:
            return value
    return ""


def required(form: Mapping[str, str], *names: str) -> str:
    """Like `first`, but a form with none of `names` is malformed."""
    value = first(form, *names)
    if not value:
        raise MalformedPayload(f"{names[0]} is missing")
    return value


def duration(value: str | None) -> int | None:
    """Seconds as Twilio writes them; None when absent or not a count."""
    try:
        seconds = int(value or "")
    except ValueError:
        return None
    return seconds if seconds >= 0 else None


def extra(form: Mapping[str, str], names: tuple[str, ...]) -> dict[str, str]:
    """The provider fields kept on a message without being modelled."""
    return {name: form[name] for name in names if form.get(name)}


def phone(inbox: TwilioInbox, raw: str, name: str | None = None) -> IdentityRef | None:
    """The phone identity of `raw`, or None for a withheld or non-phone sender."""
    if not raw or raw.strip() in WITHHELD_CALLERS:
        return None
    try:
        ref = phone_ref(raw, inbox.ctx.default_region, name=name)
    except InvalidIdentity:
        return None
    return None if ref.value in WITHHELD_CALLERS else ref


def log_ignored(inbox: TwilioInbox, event: str, reason: str) -> None:
    """Log what a handler leaves aside while still answering (as the toolkit logs
    an `IgnoredEvent`)."""
    inbox.ctx.logger.info(
        "event ignored",
        extra={"inbox": inbox.inbox_id, "channel": "twilio", "event": event, "reason": reason},
    )


# --- the answers -----------------------------------------------------------------------


def twiml(response: VoiceResponse | MessagingResponse) -> web.Response:
    return web.Response(text=str(response), content_type="text/xml")


def empty_twiml() -> web.Response:
    return twiml(MessagingResponse())


def empty() -> web.Response:
    return web.Response(status=200, text="")
