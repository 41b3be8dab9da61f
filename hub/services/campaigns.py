"""Campaigns: one message to an audience of contacts, each sent at most once.

A campaign is a document in `campaigns` (`draft` until started). Starting it
makes it `running` (or `scheduled` until its `send_at`); the scheduler's job
(`scheduler.campaigns`) then plans it and sends it:

- **Planning** resolves the audience and writes one record per contact in
  `campaign_sends`, its `_id` derived from the campaign and the contact, so
  planning again (after a crash half-way) adds only the missing ones. A record
  names the inbox, medium and identity it goes to, when it is due (its `send_at`,
  its local hour and quiet hours in the contact's zone) and the id its message
  will have (derived from its conversation and the campaign: queueing it twice
  is queueing it once). Those that cannot be sent are written `skipped` with
  their reason (opted out, unreachable, an invalid time zone).
- **Sending** claims due `pending` records (`pending` -> `queued`, a conditional
  update with a claim token, so only one claimer gets each) before queueing
  their message in the outbox with `at_most_once`. A record queued whose message
  never reached the outbox (the process died in between) is queued again under
  the same message id; one whose send may have reached the provider before a
  crash is `unknown` (the outbox's own rule) and is never sent again.
- **Following** copies the messages' statuses to their records (`sent`,
  `delivered`, `failed`, `unknown`) until nothing is left to send; a campaign
  with no `pending` or `queued` record is `completed`.

The audience is never a query taken from the request: labels and attributes
are matched by the rules below (`matches`), against a contact list read with a
filter built here from the label names only.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pymongo import UpdateOne

from hub.model import IdentityRef, utcnow
from hub.ports import Channel, SendError
from hub.services import templates
from hub.services.greetings import (
    InvalidTimezone,
    contact_timezone,
    in_quiet_hours,
    known_attributes,
    load_greeting_settings,
    quiet_until,
)
from hub.services.ingest import conversation_id_for
from hub.services.paging import BadCursor
from hub.services.placeholders import BUILTIN, PlaceholderError, fill, placeholder_names
from hub.store import IDS_PER_COMMAND, VALUES_PER_IN, Store, derived_id, find_by_ids, insert_new
from hub.store import new_id as store_new_id

log = logging.getLogger("hub.campaigns")

MEDIA = ("sms", "whatsapp", "telegram", "email", "voice", "form")
OPS = ("eq", "ne", "gt", "gte", "lt", "lte", "in")
STATUSES = ("draft", "scheduled", "running", "paused", "completed", "cancelled")
RECIPIENT_STATUSES = ("pending", "queued", "sent", "delivered", "failed", "skipped", "unknown")
# Those a job still has work for.
ACTIVE = ("scheduled", "running")
_ATTRIBUTE = re.compile(r"^[\w -]{1,64}$")
_HHMM = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)$")
_LABEL = re.compile(r"^[^$\x00]{1,64}$")
MAX_TEXT = 4096
# Identity kind of each medium a campaign can send on.
MEDIUM_KIND = {"sms": "phone", "whatsapp": "phone", "telegram": "telegram", "email": "email"}
# Media of the providers whose inboxes do not name one in their settings.
PROVIDER_MEDIA: dict[str, tuple[str, ...]] = {
    "whatsapp": ("whatsapp",),
    "telegram": ("telegram",),
    "email": ("email",),
}
# What planning keeps of a contact.
CONTACT_FIELDS = (
    "_id", "name", "phones", "emails", "telegram", "labels", "attributes", "opted_out",
    "timezone",
)
# How long statuses are still followed once a campaign has completed
# (delivery receipts come late).
FOLLOW_AFTER_COMPLETION = timedelta(days=1)


class CampaignError(ValueError):
    """A campaign that cannot be created as asked (422); `field` names what is wrong."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


class CampaignStateError(ValueError):
    """A control that does not apply to the campaign's status (409)."""


# -- inboxes and media -------------------------------------------------------------


def inbox_media(channel: Channel) -> tuple[str, ...]:
    """The media an inbox can start a conversation on (SMS and WhatsApp for a
    Twilio inbox with both numbers; none for call and form inboxes)."""
    settings = getattr(channel, "settings", None)
    medium = getattr(settings, "medium", None)
    if isinstance(medium, str):
        return (medium,) if medium in MEDIUM_KIND else ()
    if channel.name == "twilio":
        media = []
        if getattr(settings, "number", None):
            media.append("sms")
        if getattr(settings, "whatsapp_number", None):
            media.append("whatsapp")
        return tuple(media)
    return PROVIDER_MEDIA.get(channel.name, ())


# -- creation ----------------------------------------------------------------------


@dataclass(frozen=True)
class Condition:
    attribute: str
    op: str
    value: Any


def _number(value: Any) -> float | None:
    """A value as a number when it is one (or a string that spells one)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            return None
        return number if math.isfinite(number) else None
    return None


def _compare(stored: Any, op: str, wanted: Any) -> bool:
    if op == "in":
        return any(_compare(stored, "eq", w) for w in wanted)
    if op in ("eq", "ne"):
        a, b = _number(stored), _number(wanted)
        if isinstance(wanted, bool) or isinstance(stored, bool):
            same = stored is wanted or (
                isinstance(stored, str) and str(wanted).lower() == stored.strip().lower()
            )
        elif a is not None and b is not None:
            same = a == b
        else:
            same = str(stored).strip().casefold() == str(wanted).strip().casefold()
        return same if op == "eq" else not same
    a, b = _number(stored), _number(wanted)
    if a is None or b is None:
        if isinstance(stored, str) and isinstance(wanted, str):
            x, y = stored.casefold(), wanted.casefold()
        else:
            return False
    else:
        x, y = a, b  # type: ignore[assignment]
    return {"gt": x > y, "gte": x >= y, "lt": x < y, "lte": x <= y}[op]


def matches(contact: Mapping[str, Any], conditions: Sequence[Condition]) -> bool:
    """Whether a contact's attributes meet every condition. A contact without
    the attribute matches only `ne`."""
    attributes = contact.get("attributes") or {}
    if not isinstance(attributes, Mapping):
        attributes = {}
    for cond in conditions:
        if cond.attribute not in attributes or attributes[cond.attribute] is None:
            if cond.op != "ne":
                return False
            continue
        if not _compare(attributes[cond.attribute], cond.op, cond.value):
            return False
    return True


def _scalar(value: Any, where: str) -> Any:
    if isinstance(value, bool) or value is None:
        if value is None:
            raise CampaignError(where, "a value is needed (a string, a number or a boolean)")
        return value
    if isinstance(value, int | float):
        if not math.isfinite(value):
            raise CampaignError(where, "not a finite number")
        return value
    if isinstance(value, str) and len(value) <= 256:
        return value
    raise CampaignError(where, "expected a string (at most 256 characters), a number or a boolean")


def parse_conditions(raw: Any) -> list[Condition]:
    """`audience.attributes` as conditions: `{"city": "Riga", "orders": {"gte": 3}}`."""
    if raw is None:
        return []
    if not isinstance(raw, Mapping):
        raise CampaignError("audience.attributes", "expected an object {attribute: condition}")
    if len(raw) > 20:
        raise CampaignError("audience.attributes", "at most 20 conditions")
    out: list[Condition] = []
    for name, spec in raw.items():
        where = f"audience.attributes.{name}"
        if not isinstance(name, str) or not _ATTRIBUTE.match(name):
            raise CampaignError(where, "an attribute name is 1-64 letters, digits, _, - or spaces")
        if isinstance(spec, Mapping):
            if not spec:
                raise CampaignError(where, f"expected one of {', '.join(OPS)}")
            for op, value in spec.items():
                if op not in OPS:
                    raise CampaignError(
                        where, f"unknown comparison {op!r} (use {', '.join(OPS)})"
                    )
                if op == "in":
                    if not isinstance(value, list) or not value or len(value) > 100:
                        raise CampaignError(f"{where}.in", "expected a list of 1-100 values")
                    value = [_scalar(v, f"{where}.in") for v in value]
                else:
                    value = _scalar(value, f"{where}.{op}")
                    if op in ("gt", "gte", "lt", "lte") and isinstance(value, bool):
                        raise CampaignError(f"{where}.{op}", "a boolean cannot be ordered")
                out.append(Condition(name, op, value))
        else:
            out.append(Condition(name, "eq", _scalar(spec, where)))
    return out


def _time(value: Any, where: str) -> datetime:
    if isinstance(value, datetime):
        moment = value
    elif isinstance(value, str) and len(value) <= 40:
        try:
            moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise CampaignError(where, f"not an ISO 8601 time: {value!r}") from None
    else:
        raise CampaignError(where, "expected an ISO 8601 time with its zone")
    if moment.utcoffset() is None:
        raise CampaignError(where, "the time needs a zone (Z or +hh:mm)")
    return moment.astimezone(UTC)


def parse_hhmm(value: Any, where: str) -> str:
    if not isinstance(value, str) or not _HHMM.match(value):
        raise CampaignError(where, f"expected HH:MM (00:00-23:59), got {value!r}")
    return value


def _hhmm(text: str) -> time:
    hours, minutes = text.split(":")
    return time(int(hours), int(minutes))


def _last_activity(raw: Any) -> dict[str, datetime] | None:
    if raw is None:
        return None
    if not isinstance(raw, Mapping) or not raw or set(raw) - {"after", "before"}:
        raise CampaignError("audience.last_activity", 'expected {"after"?, "before"?} times')
    return {key: _time(value, f"audience.last_activity.{key}") for key, value in raw.items()}


def _placeholders(text: str, where: str) -> set[str]:
    try:
        return set(placeholder_names(text))
    except PlaceholderError as error:
        raise CampaignError(where, str(error)) from None


async def parse_campaign(
    store: Store,
    raw: Mapping[str, Any],
    *,
    inboxes: Mapping[str, Channel],
    now: datetime,
) -> dict[str, Any]:
    """A new campaign's document from the request's body (CampaignError: refused)."""
    name = raw.get("name")
    if not isinstance(name, str) or not name.strip() or len(name) > 200:
        raise CampaignError("name", "a name of 1-200 characters is needed")

    audience = raw.get("audience")
    if not isinstance(audience, Mapping):
        raise CampaignError("audience", "expected an object {labels?, channels?, attributes?}")
    unknown = set(audience) - {"labels", "channels", "attributes", "last_activity"}
    if unknown:
        raise CampaignError("audience", f"unknown keys: {', '.join(sorted(map(str, unknown)))}")
    labels = audience.get("labels") or []
    if not isinstance(labels, list) or len(labels) > 50:
        raise CampaignError("audience.labels", "expected a list of at most 50 labels")
    for label in labels:
        if not isinstance(label, str) or not _LABEL.match(label):
            raise CampaignError("audience.labels", f"not a label: {label!r}")
    channels = audience.get("channels") or []
    if not isinstance(channels, list) or len(channels) > len(MEDIA):
        raise CampaignError("audience.channels", f"expected a list of {', '.join(MEDIA)}")
    for medium in channels:
        if medium not in MEDIUM_KIND:
            raise CampaignError(
                "audience.channels",
                f"{medium!r} cannot carry a campaign (use {', '.join(MEDIUM_KIND)})",
            )
    if len(set(channels)) != len(channels):
        raise CampaignError("audience.channels", "a medium is named twice")
    conditions = parse_conditions(audience.get("attributes"))
    last_activity = _last_activity(audience.get("last_activity"))
    if not labels and not conditions and not last_activity:
        raise CampaignError(
            "audience",
            "the audience is empty: name labels, attribute conditions or last activity",
        )

    inbox = raw.get("inbox")
    if inbox is not None:
        if not isinstance(inbox, str) or inbox not in inboxes:
            raise CampaignError("inbox", f"no inbox {inbox!r} is configured")
        media = inbox_media(inboxes[inbox])
        if not media:
            raise CampaignError("inbox", f"inbox {inbox!r} cannot start a conversation")
        if channels and not set(channels) & set(media):
            raise CampaignError(
                "audience.channels", f"inbox {inbox!r} carries only {', '.join(media)}"
            )

    message = raw.get("message")
    if not isinstance(message, Mapping) or set(message) - {"text", "template"}:
        raise CampaignError("message", "expected an object {text, template?}")
    text = message.get("text")
    if text is not None and (not isinstance(text, str) or len(text) > MAX_TEXT):
        raise CampaignError("message.text", f"expected a text of at most {MAX_TEXT} characters")
    text = text.strip() if isinstance(text, str) else None
    used: set[str] = set()
    if text:
        used |= _placeholders(text, "message.text")
    template = message.get("template")
    if template is not None:
        if not isinstance(template, Mapping) or set(template) - {"name", "language", "parameters"}:
            raise CampaignError("message.template", "expected {name, language, parameters?}")
        tname = template.get("name")
        if not isinstance(tname, str) or not tname.strip() or len(tname) > 512:
            raise CampaignError("message.template.name", "the approved template's name is needed")
        language = template.get("language")
        if not isinstance(language, str) or not re.match(r"^[A-Za-z]{2,3}([_-][A-Za-z]{2,4})?$",
                                                           language):
            raise CampaignError("message.template.language", "a language code such as en_US")
        params = template.get("parameters") or []
        if not isinstance(params, list) or len(params) > 20:
            raise CampaignError("message.template.parameters", "expected a list of texts")
        for index, param in enumerate(params):
            where = f"message.template.parameters[{index}]"
            if not isinstance(param, str) or not param or len(param) > 1024:
                raise CampaignError(where, "expected a text of 1-1024 characters")
            used |= _placeholders(param, where)
        template = {"name": tname.strip(), "language": language, "parameters": list(params)}
    if not text and template is None:
        raise CampaignError("message", "a text or a WhatsApp template is needed")
    only_whatsapp = channels == ["whatsapp"] or (
        inbox is not None and inbox_media(inboxes[inbox]) == ("whatsapp",)
    )
    if not text and not only_whatsapp:
        raise CampaignError(
            "message.text",
            'a text is needed unless the campaign goes on WhatsApp only (channels ["whatsapp"])',
        )
    if channels == ["whatsapp"] and template is None and not text:
        raise CampaignError("message.template", "a WhatsApp campaign needs a template or a text")
    if template is not None:
        await check_template(inboxes, inbox, template)
    wanted = used - BUILTIN
    if wanted:
        known = await known_attributes(store, wanted)
        missing = sorted(wanted - known)
        if missing:
            raise CampaignError(
                "message",
                "unknown placeholder "
                + ", ".join("{" + m + "}" for m in missing)
                + " (use {first_name}, {name} or an attribute contacts have)",
            )

    send_at = raw.get("send_at")
    if send_at is not None:
        send_at = _time(send_at, "send_at")
        if send_at < now - timedelta(seconds=5):
            raise CampaignError("send_at", "is in the past")
    local_time = raw.get("local_time")
    if local_time is not None:
        local_time = parse_hhmm(local_time, "local_time")
    quiet = raw.get("quiet_hours")
    if quiet is not None:
        if not isinstance(quiet, Mapping) or set(quiet) != {"start", "end"}:
            raise CampaignError("quiet_hours", 'expected {"start": "HH:MM", "end": "HH:MM"}')
        quiet = {
            "start": parse_hhmm(quiet["start"], "quiet_hours.start"),
            "end": parse_hhmm(quiet["end"], "quiet_hours.end"),
        }
    else:
        greetings = await load_greeting_settings(store)
        quiet = {
            "start": greetings.quiet_start.strftime("%H:%M"),
            "end": greetings.quiet_end.strftime("%H:%M"),
        }
    unknown = set(raw) - {
        "name", "audience", "message", "inbox", "send_at", "local_time", "quiet_hours",
    }
    if unknown:
        raise CampaignError("body", f"unknown keys: {', '.join(sorted(map(str, unknown)))}")
    return {
        "_id": store_new_id(),
        "name": name.strip(),
        "status": "draft",
        "audience": {
            "labels": labels,
            "channels": channels,
            "attributes": dict(audience.get("attributes") or {}),
            "last_activity": last_activity,
        },
        "message": {"text": text or None, "template": template},
        "inbox": inbox,
        "send_at": send_at,
        "local_time": local_time,
        "quiet_hours": quiet,
        "created_at": now,
        "started_at": None,
        "planned_at": None,
        "completed_at": None,
        "cancelled_at": None,
        "targeted": None,
    }


async def check_template(
    inboxes: Mapping[str, Channel], inbox: str | None, template: Mapping[str, Any]
) -> None:
    """Refuse a WhatsApp template that no inbox the campaign may use has approved
    (name, language, number of parameters), by the inboxes' own lists
    (`hub.services.templates`). Inboxes that keep no list, or whose provider
    cannot be asked now, are not held against it."""
    boxes = [inbox] if inbox is not None else list(inboxes)
    refusals: list[str] = []
    for box in boxes:
        channel = inboxes.get(box)
        if channel is None or "whatsapp" not in inbox_media(channel):
            continue
        try:
            await templates.prepare(
                channel,
                "whatsapp",
                str(template["name"]),
                str(template["language"]),
                list(template.get("parameters") or []),
            )
        except templates.TemplateRefused as error:
            refusals.append(str(error))
            continue
        except (templates.NoTemplates, SendError, AttributeError, NotImplementedError):
            continue
        return  # approved in this inbox
    if refusals:
        raise CampaignError("message.template", refusals[0])


async def whatsapp_template(
    channel: Channel, template: Mapping[str, Any], parameters: Sequence[str]
) -> tuple[dict[str, Any], str | None]:
    """The outbound template (and its filled body) for one recipient on a WhatsApp
    inbox: the inbox's own form of it (`hub.services.templates`) when it keeps a
    list; else Graph's `components` with the parameters in the body.
    TemplateRefused when the inbox's list refuses it."""
    try:
        return await templates.prepare(
            channel, "whatsapp", str(template["name"]), str(template["language"]), parameters
        )
    except (templates.NoTemplates, SendError, AttributeError, NotImplementedError):
        out: dict[str, Any] = {"name": template["name"], "language": template["language"]}
        if parameters:
            out["components"] = [
                {"type": "body", "parameters": [{"type": "text", "text": p} for p in parameters]}
            ]
        return out, None


async def create(store: Store, doc: dict[str, Any], *, agent_id: str | None) -> dict[str, Any]:
    doc = {**doc, "created_by": agent_id}
    await store.campaigns.insert_one(doc)
    return doc


# -- audience ----------------------------------------------------------------------


def _label_filter(labels: Sequence[str]) -> dict[str, Any]:
    # Built here from label strings only: a contact with any of the labels.
    return {"labels": {"$in": [str(label) for label in labels]}} if labels else {}


async def _last_inbound(store: Store, contact_ids: Sequence[str]) -> dict[str, datetime]:
    latest: dict[str, datetime] = {}
    async for conv in _conversations_of(store, contact_ids):
        at = conv.get("last_inbound_at")
        cid = str(conv.get("contact_id"))
        if isinstance(at, datetime) and (cid not in latest or at > latest[cid]):
            latest[cid] = at
    return latest


async def _conversations_of(store: Store, contact_ids: Sequence[str]) -> Any:
    fields = {"contact_id": 1, "inbox": 1, "channel": 1, "identity": 1, "last_inbound_at": 1}
    if len(contact_ids) > 2000:
        wanted = set(contact_ids)
        async for conv in store.conversations.find({}):  # whole: see `audience`
            if conv.get("contact_id") in wanted:
                yield {k: conv.get(k) for k in fields}
        return
    ids = list(contact_ids)
    for start in range(0, len(ids), VALUES_PER_IN):
        chunk = ids[start : start + VALUES_PER_IN]
        async for conv in store.conversations.find({"contact_id": {"$in": chunk}}, fields):
            yield conv


async def audience(store: Store, campaign: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The contacts a campaign's audience names (before exclusions)."""
    spec = campaign["audience"]
    conditions = parse_conditions(spec.get("attributes"))
    found = [
        {k: c.get(k) for k in CONTACT_FIELDS}  # kept small: 100,000 of them
        # Whole documents: the embedded engine reads them faster than a projection.
        async for c in store.contacts.find(_label_filter(spec.get("labels") or []))
        if matches(c, conditions)
    ]
    window = spec.get("last_activity")
    if window:
        latest = await _last_inbound(store, [str(c["_id"]) for c in found])
        after, before = window.get("after"), window.get("before")

        def active(contact: Mapping[str, Any]) -> bool:
            at = latest.get(str(contact["_id"]))
            if at is None:
                return False
            at = at if at.tzinfo else at.replace(tzinfo=UTC)
            return (after is None or at >= after) and (before is None or at < before)

        found = [c for c in found if active(c)]
    return found


async def count_audience(store: Store, raw_audience: Mapping[str, Any]) -> int:
    """How many contacts an audience (as a request names it) holds now."""
    labels = raw_audience.get("labels") or []
    if not isinstance(labels, list) or not all(
        isinstance(x, str) and _LABEL.match(x) for x in labels
    ):
        raise CampaignError("audience.labels", "expected a list of labels")
    return len(
        await audience(
            store,
            {
                "audience": {
                    "labels": labels,
                    "attributes": raw_audience.get("attributes"),
                    "last_activity": _last_activity(raw_audience.get("last_activity")),
                }
            },
        )
    )


# -- planning ----------------------------------------------------------------------


def record_id(campaign_id: str, contact_id: str) -> str:
    """`<campaign id>:<derived>`: unique per campaign and contact, and a campaign's
    records are one range of the primary key (its recipient list pages walk it)."""
    return f"{campaign_id}:{derived_id('campaign', campaign_id, contact_id)}"


_RECORD_ID = re.compile(r"[0-9a-f]{24}:[0-9a-f]{24}")


def message_key(campaign_id: str) -> str:
    """The outbox key of a campaign's message in a conversation (one per campaign)."""
    return f"campaign:{campaign_id}"


def message_id_for(conversation_id: str, campaign_id: str) -> str:
    """The id `enqueue` gives the campaign's message in that conversation."""
    return derived_id("keyed", conversation_id, message_key(campaign_id))


def stage_of(campaign_id: str, status: str) -> str:
    return f"{campaign_id}:{status}"


@dataclass
class Route:
    inbox: str
    medium: str
    identity: str  # "<kind>:<value>"


def _identities(contact: Mapping[str, Any], kind: str) -> list[str]:
    if kind == "phone":
        return [p for p in contact.get("phones") or [] if isinstance(p, str)]
    if kind == "email":
        return [e for e in contact.get("emails") or [] if isinstance(e, str)]
    telegram = contact.get("telegram")
    return [str(telegram)] if telegram else []


def choose_route(
    contact: Mapping[str, Any],
    conversations: Sequence[Mapping[str, Any]],
    media_of: Mapping[str, tuple[str, ...]],
    *,
    inbox: str | None,
    channels: Sequence[str],
) -> tuple[Route | None, str | None]:
    """Where a contact gets the campaign, or why nowhere. `conversations` are the
    contact's, most recent inbound first."""
    opted = contact.get("opted_out") or {}
    usable = [
        c
        for c in conversations
        if c.get("inbox") in media_of
        and c.get("channel") in media_of.get(str(c.get("inbox")), ())
        and (inbox is None or c.get("inbox") == inbox)
    ]

    def from_identity(medium: str) -> Route | None:
        kind = MEDIUM_KIND[medium]
        values = _identities(contact, kind)
        if not values:
            return None
        candidates = [inbox] if inbox is not None else list(media_of)
        for box in candidates:
            if medium in media_of.get(box, ()):
                return Route(box, medium, f"{kind}:{values[0]}")
        return None

    def best(medium: str) -> Route | None:
        for conv in usable:
            if conv.get("channel") == medium and conv.get("identity"):
                return Route(str(conv["inbox"]), medium, str(conv["identity"]))
        return from_identity(medium)

    opted_out_of: list[str] = []
    if channels:
        for medium in channels:
            route = best(medium)
            if route is None:
                continue
            if opted.get(medium):
                opted_out_of.append(medium)
                continue
            return route, None
    else:
        route = None
        if usable and usable[0].get("last_inbound_at") is not None:
            # The preferred channel: the one the contact wrote on last.
            first = usable[0]
            route = Route(str(first["inbox"]), str(first["channel"]), str(first["identity"]))
        elif usable:
            first = usable[0]
            route = Route(str(first["inbox"]), str(first["channel"]), str(first["identity"]))
        else:
            for medium in MEDIUM_KIND:
                route = from_identity(medium)
                if route is not None:
                    break
        if route is not None:
            if opted.get(route.medium):
                return None, f"opted out of {route.medium}"
            return route, None
    if opted_out_of:
        return None, f"opted out of {', '.join(opted_out_of)}"
    return None, "unreachable: no identity on the campaign's channels"


def due_time(
    base: datetime,
    zone: ZoneInfo | None,
    local_time: str | None,
    quiet: Mapping[str, str] | None,
) -> datetime:
    """When a recipient's message goes: `base` (the campaign's `send_at`, or when
    it started), moved to the first `local_time` at or after it in `zone`, then
    past quiet hours in `zone`. In UTC."""
    due = base
    if zone is None:
        return due
    local = due.astimezone(zone)
    if local_time is not None:
        wanted = _hhmm(local_time)
        candidate = datetime.combine(local.date(), wanted, tzinfo=zone)
        if candidate < local:
            candidate = datetime.combine(local.date() + timedelta(days=1), wanted, tzinfo=zone)
        local = candidate
    if quiet is not None:
        start, end = _hhmm(quiet["start"]), _hhmm(quiet["end"])
        if in_quiet_hours(local.time(), start, end):
            local = quiet_until(local.replace(tzinfo=None), start, end).replace(tzinfo=zone)
    return local.astimezone(UTC)


def _needs_zone(campaign: Mapping[str, Any]) -> bool:
    quiet = campaign.get("quiet_hours")
    return bool(campaign.get("local_time")) or bool(quiet and quiet["start"] != quiet["end"])


async def plan(
    store: Store,
    campaign: Mapping[str, Any],
    media_of: Mapping[str, tuple[str, ...]],
    *,
    now: datetime,
    batch: int = IDS_PER_COMMAND,
) -> int:
    """Write the campaign's per-recipient records (those already written are kept
    as they are); return how many contacts it targets."""
    cid = str(campaign["_id"])
    contacts = await audience(store, campaign)
    ids = [str(c["_id"]) for c in contacts]
    by_contact: dict[str, list[dict[str, Any]]] = {}
    async for conv in _conversations_of(store, ids):
        by_contact.setdefault(str(conv["contact_id"]), []).append(conv)
    epoch = datetime.min.replace(tzinfo=UTC)

    def recency(conv: Mapping[str, Any]) -> datetime:
        at = conv.get("last_inbound_at")
        if not isinstance(at, datetime):
            return epoch
        return at if at.tzinfo else at.replace(tzinfo=UTC)

    greetings = await load_greeting_settings(store)
    default_zone = greetings.default_timezone
    base = campaign.get("send_at") or now  # "at or after send_at (or now)"
    needs_zone = _needs_zone(campaign)
    channels = campaign["audience"].get("channels") or []
    records: list[dict[str, Any]] = []
    writing: asyncio.Task[set[Any]] | None = None
    # Zones by the contact's own `timezone` (ZoneInfo keeps only a few loaded).
    zones: dict[str, ZoneInfo | InvalidTimezone] = {}

    def zone_of_contact(contact: Mapping[str, Any]) -> ZoneInfo:
        own = contact.get("timezone")
        if not isinstance(own, str) or not own:
            return contact_timezone(contact, default_zone)
        found = zones.get(own)
        if found is None:
            try:
                found = contact_timezone(contact, default_zone)
            except InvalidTimezone as error:
                found = error
            zones[own] = found
        if isinstance(found, InvalidTimezone):
            raise found
        return found

    for contact in contacts:
        contact_id = str(contact["_id"])
        convs = sorted(by_contact.get(contact_id, []), key=recency, reverse=True)
        route, reason = choose_route(
            contact, convs, media_of, inbox=campaign.get("inbox"), channels=channels
        )
        zone: ZoneInfo | None = None
        if route is not None and needs_zone:
            try:
                zone = zone_of_contact(contact)
            except InvalidTimezone as error:
                route, reason = None, f"invalid time zone: {error}"
        record: dict[str, Any] = {
            "_id": record_id(cid, contact_id),
            "campaign_id": cid,
            "contact_id": contact_id,
            "status": "pending" if route else "skipped",
            "stage": stage_of(cid, "pending" if route else "skipped"),
            "reason": reason,
            "inbox": route.inbox if route else None,
            "channel": route.medium if route else None,
            "identity": route.identity if route else None,
            "conversation_id": None,
            "message_id": None,
            "timezone": zone.key if zone else None,
            "due_at": None,
            "queued_at": None,
            "sent_at": None,
            "claim": None,
        }
        if route is not None:
            conv_id = conversation_id_for(route.inbox, route.medium, route.identity)
            record["conversation_id"] = conv_id
            record["message_id"] = message_id_for(conv_id, cid)
            record["due_at"] = due_time(
                base, zone, campaign.get("local_time"), campaign.get("quiet_hours")
            )
        records.append(record)
        if len(records) >= batch:
            # One batch is written while the next is made.
            if writing is not None:
                await writing
            writing = asyncio.ensure_future(insert_new(store.campaign_sends, records))
            records = []
    if writing is not None:
        await writing
    if records:
        await insert_new(store.campaign_sends, records)
    await store.campaigns.update_one(
        {"_id": cid}, {"$set": {"planned_at": now, "targeted": len(contacts)}}
    )
    return len(contacts)


# -- control -----------------------------------------------------------------------


async def get(store: Store, campaign_id: str) -> dict[str, Any] | None:
    return await store.campaigns.find_one({"_id": campaign_id})


async def start(store: Store, campaign_id: str, *, now: datetime | None = None) -> dict[str, Any]:
    """Start a draft (now, or scheduled at its `send_at`), or resume a paused one."""
    now = now or utcnow()
    doc = await get(store, campaign_id)
    if doc is None:
        raise KeyError(campaign_id)
    if doc["status"] not in ("draft", "paused"):
        raise CampaignStateError(f"a {doc['status']} campaign cannot be started")
    send_at = doc.get("send_at")
    if doc["status"] == "draft" and send_at is not None and send_at < now - timedelta(seconds=5):
        raise CampaignError("send_at", "is in the past: create the campaign again")
    status = "scheduled" if send_at is not None and send_at > now else "running"
    fields: dict[str, Any] = {"status": status}
    if doc["status"] == "draft":
        fields["started_at"] = now
    updated = await store.campaigns.find_one_and_update(
        {"_id": campaign_id, "status": doc["status"]}, {"$set": fields}, return_document=True
    )
    if updated is None:
        raise CampaignStateError("the campaign changed meanwhile; try again")
    return dict(updated)


async def pause(store: Store, campaign_id: str) -> dict[str, Any]:
    return await _move(store, campaign_id, ("scheduled", "running"), {"status": "paused"})


async def cancel(store: Store, campaign_id: str, *, now: datetime | None = None) -> dict[str, Any]:
    return await _move(
        store,
        campaign_id,
        ("draft", "scheduled", "running", "paused"),
        {"status": "cancelled", "cancelled_at": now or utcnow()},
    )


async def _move(
    store: Store, campaign_id: str, allowed: Sequence[str], fields: dict[str, Any]
) -> dict[str, Any]:
    doc = await get(store, campaign_id)
    if doc is None:
        raise KeyError(campaign_id)
    if doc["status"] not in allowed:
        verb = "paused" if fields["status"] == "paused" else "cancelled"
        raise CampaignStateError(f"a {doc['status']} campaign cannot be {verb}")
    updated = await store.campaigns.find_one_and_update(
        {"_id": campaign_id, "status": {"$in": list(allowed)}},
        {"$set": fields},
        return_document=True,
    )
    if updated is None:
        raise CampaignStateError("the campaign changed meanwhile; try again")
    return dict(updated)


# -- reading -----------------------------------------------------------------------


async def count_stage(store: Store, campaign_id: str, status: str) -> int:
    """How many of a campaign's records have `status`. The `count` command, not
    `count_documents`: the embedded engine runs the latter as an aggregation that
    refuses to hold 100,000 matches; both engines answer `count` from the index."""
    answer = await store.db.command(
        "count", "campaign_sends", query={"stage": stage_of(campaign_id, status)}
    )
    return int(answer.get("n", 0))


async def counts(store: Store, campaign_id: str) -> dict[str, int]:
    """Records per status."""
    return {s: await count_stage(store, campaign_id, s) for s in RECIPIENT_STATUSES}


async def stats(store: Store, campaign: Mapping[str, Any]) -> dict[str, int]:
    """The contract's statistics: `targeted` the audience before exclusions,
    `skipped` those excluded, `sent` every message the provider accepted
    (delivered ones included), `delivered` those confirmed."""
    per = await counts(store, str(campaign["_id"]))
    targeted = campaign.get("targeted")
    if targeted is None:
        targeted = sum(per.values())
    return {
        "targeted": int(targeted),
        "queued": per["queued"],
        "sent": per["sent"] + per["delivered"],
        "delivered": per["delivered"],
        "failed": per["failed"],
        "skipped": per["skipped"],
        "unknown": per["unknown"],
        "pending": per["pending"],
    }


def campaign_view(
    doc: Mapping[str, Any], stats_: Mapping[str, int] | None = None
) -> dict[str, Any]:
    audience_ = doc.get("audience") or {}
    window = audience_.get("last_activity")
    return {
        "id": str(doc["_id"]),
        "name": doc.get("name"),
        "status": doc.get("status"),
        "audience": {
            "labels": list(audience_.get("labels") or []),
            "channels": list(audience_.get("channels") or []),
            "attributes": dict(audience_.get("attributes") or {}),
            "last_activity": {k: _iso(v) for k, v in window.items()} if window else None,
        },
        "message": {
            "text": (doc.get("message") or {}).get("text"),
            "template": (doc.get("message") or {}).get("template"),
        },
        "inbox": doc.get("inbox"),
        "send_at": _iso(doc.get("send_at")),
        "local_time": doc.get("local_time"),
        "quiet_hours": doc.get("quiet_hours"),
        "created_at": _iso(doc.get("created_at")),
        "started_at": _iso(doc.get("started_at")),
        "completed_at": _iso(doc.get("completed_at")),
        "cancelled_at": _iso(doc.get("cancelled_at")),
        "stats": dict(stats_) if stats_ is not None else None,
    }


def _iso(value: Any) -> str | None:
    if not isinstance(value, datetime):
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


async def contact_names(store: Store, records: Sequence[Mapping[str, Any]]) -> dict[str, str]:
    found = await find_by_ids(store.contacts, [r["contact_id"] for r in records])
    return {cid: str(doc.get("name") or "") for cid, doc in found.items()}


def recipient_view(doc: Mapping[str, Any], name: str | None = None) -> dict[str, Any]:
    return {
        "contact_id": doc.get("contact_id"),
        "contact_name": name,
        "channel": doc.get("channel"),
        "status": doc.get("status"),
        "reason": doc.get("reason"),
        "message_id": doc.get("message_id") if doc.get("status") not in ("pending", "skipped")
        else None,
        "sent_at": _iso(doc.get("sent_at")),
        "due_at": _iso(doc.get("due_at")),
        "inbox": doc.get("inbox"),
    }


async def page(
    store: Store, *, cursor: str | None, limit: int
) -> tuple[list[dict[str, Any]], str | None]:
    """Campaigns, newest first (ids are ObjectIds: they sort by creation)."""
    filt: dict[str, Any] = {}
    if cursor is not None:
        if not re.fullmatch(r"[0-9a-f]{24}", cursor):
            raise BadCursor("cursor: not a cursor this API gave")
        filt = {"_id": {"$lt": cursor}}
    docs = await store.campaigns.find(filt).sort("_id", -1).limit(limit + 1).to_list()
    more = len(docs) > limit
    docs = docs[:limit]
    return docs, (str(docs[-1]["_id"]) if more and docs else None)


async def recipients(
    store: Store, campaign_id: str, *, status: str | None, cursor: str | None, limit: int
) -> tuple[list[dict[str, Any]], str | None]:
    """A campaign's per-recipient records, by record id."""
    if cursor is not None and (
        not _RECORD_ID.fullmatch(cursor) or not cursor.startswith(campaign_id + ":")
    ):
        raise BadCursor("cursor: not a cursor this API gave")
    # The campaign's range of the primary key, in order (`;` follows `:`).
    filt: dict[str, Any] = {"_id": {"$gt": cursor or f"{campaign_id}:", "$lt": f"{campaign_id};"}}
    if status:
        filt["stage"] = stage_of(campaign_id, status)
    docs = await store.campaign_sends.find(filt).sort("_id", 1).limit(limit + 1).to_list()
    more = len(docs) > limit
    docs = docs[:limit]
    return docs, (str(docs[-1]["_id"]) if more and docs else None)


# -- sending -----------------------------------------------------------------------


async def due_records(
    store: Store, campaign_id: str, now: datetime, limit: int
) -> list[dict[str, Any]]:
    if limit <= 0:
        return []
    return (
        await store.campaign_sends.find(
            {"stage": stage_of(campaign_id, "pending"), "due_at": {"$lte": now}}
        )
        .limit(limit)
        .to_list()
    )


async def next_due(store: Store, campaign_id: str) -> datetime | None:
    doc = (
        await store.campaign_sends.find({"stage": stage_of(campaign_id, "pending")}, {"due_at": 1})
        .sort("due_at", 1)
        .limit(1)
        .to_list()
    )
    return doc[0]["due_at"] if doc else None


async def claim(
    store: Store, campaign_id: str, records: Sequence[Mapping[str, Any]], now: datetime
) -> list[dict[str, Any]]:
    """Move `pending` records to `queued`; return those this call moved (a record
    another claimer moved first is not among them)."""
    if not records:
        return []
    token = store_new_id()
    ids = [r["_id"] for r in records]
    await store.campaign_sends.update_many(
        {"_id": {"$in": ids}, "stage": stage_of(campaign_id, "pending")},
        {
            "$set": {
                "status": "queued",
                "stage": stage_of(campaign_id, "queued"),
                "claim": token,
                "queued_at": now,
            }
        },
    )
    return await store.campaign_sends.find({"_id": {"$in": ids}, "claim": token}).to_list()


async def settle(
    store: Store, campaign_id: str, changes: Iterable[tuple[str, str, dict[str, Any]]]
) -> None:
    """Apply (record id, new status, other fields) in one write."""
    ops = [
        UpdateOne(
            {"_id": rid},
            {"$set": {"status": status, "stage": stage_of(campaign_id, status), **fields}},
        )
        for rid, status, fields in changes
    ]
    if ops:
        await store.campaign_sends.bulk_write(ops, ordered=False)


async def personal(
    campaign: Mapping[str, Any], contact: Mapping[str, Any], medium: str, channel: Channel
) -> tuple[str | None, dict[str, Any] | None]:
    """The text and template one contact gets (the template only on WhatsApp,
    its parameters filled; without a text, the thread shows the template's filled
    body). TemplateRefused when the inbox's list of templates refuses it."""
    message = campaign.get("message") or {}
    text = message.get("text")
    filled = fill(text, contact) if text else None
    template = message.get("template")
    out_template = None
    if template and medium == "whatsapp":
        params = [fill(p, contact) for p in template.get("parameters") or []]
        out_template, body = await whatsapp_template(channel, template, params)
        filled = filled or body
    return filled, out_template


# Message status -> recipient status.
FOLLOW = {
    "queued": "queued",
    "sending": "queued",
    "sent": "sent",
    "delivered": "delivered",
    "read": "delivered",
    "failed": "failed",
    "unknown": "unknown",
}


async def follow(
    store: Store,
    campaign_id: str,
    statuses: Sequence[str],
    *,
    limit: int | None = None,
    after: str | None = None,
) -> tuple[list[dict[str, Any]], int, str | None]:
    """Copy message statuses to the campaign's records in `statuses`; return the
    queued records whose message is not in the store (never reached the outbox),
    how many records changed, and, with a `limit`, the last record id looked at
    when there may be more (pass it back as `after` to go on; None: done)."""
    missing: list[dict[str, Any]] = []
    changed = 0
    last: str | None = None
    for status in statuses:
        filt: dict[str, Any] = {"stage": stage_of(campaign_id, status)}
        cursor = store.campaign_sends.find(filt)
        if limit is not None:
            filt["_id"] = {"$gt": after or f"{campaign_id}:", "$lt": f"{campaign_id};"}
            cursor = store.campaign_sends.find(filt).sort("_id", 1).limit(limit)
        records = await cursor.to_list()
        if limit is not None and len(records) == limit:
            last = str(records[-1]["_id"])
        for start in range(0, len(records), IDS_PER_COMMAND):
            chunk = records[start : start + IDS_PER_COMMAND]
            messages = await find_by_ids(store.messages, [r["message_id"] for r in chunk])
            updates = []
            for record in chunk:
                message = messages.get(record["message_id"])
                if message is None:
                    if record["status"] == "queued":
                        missing.append(record)
                    continue
                new = FOLLOW.get(str(message.get("status")))
                if new is None or new == record["status"]:
                    continue
                if new == "queued" and record["status"] != "queued":
                    continue
                fields: dict[str, Any] = {}
                if new in ("sent", "delivered"):
                    fields["sent_at"] = message.get("sent_at") or message.get("created_at")
                if new == "failed":
                    fields["reason"] = message.get("error")
                if new == "unknown":
                    fields["reason"] = "the hub stopped while sending it: not sent again"
                updates.append((record["_id"], new, fields))
            await settle(store, campaign_id, updates)
            changed += len(updates)
    return missing, changed, last


async def active(store: Store, now: datetime) -> list[dict[str, Any]]:
    """Campaigns a job has work for: scheduled, running and paused ones (whose
    queued messages are still followed), and completed or cancelled ones for a
    day (delivery receipts come late)."""
    return await store.campaigns.find(
        {
            "$or": [
                {"status": {"$in": [*ACTIVE, "paused"]}},
                {"status": "completed", "completed_at": {"$gt": now - FOLLOW_AFTER_COMPLETION}},
                {"status": "cancelled", "cancelled_at": {"$gt": now - FOLLOW_AFTER_COMPLETION}},
            ]
        }
    ).to_list()


async def set_fields(store: Store, campaign_id: str, fields: dict[str, Any]) -> None:
    await store.campaigns.update_one({"_id": campaign_id}, {"$set": fields})


async def complete_if_done(store: Store, campaign_id: str, now: datetime) -> bool:
    for status in ("pending", "queued"):
        if await count_stage(store, campaign_id, status):
            return False
    result = await store.campaigns.update_one(
        {"_id": campaign_id, "status": "running"},
        {"$set": {"status": "completed", "completed_at": now}},
    )
    return result.modified_count == 1


def identity_ref(identity: str) -> IdentityRef:
    kind, _, value = identity.partition(":")
    return IdentityRef(kind=kind, value=value)  # type: ignore[arg-type]


def zone_of(name: str | None) -> ZoneInfo | None:
    if not name:
        return None
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return None
