"""Media out over HTTP: the multipart form of a reply with files, and the signed,
expiring route a provider fetches an agent's file from (Twilio's `MediaUrl`).

`GET /media/signed/{id}?exp=&sig=` needs no login: the signature (HMAC-SHA256 of
the id and the expiry with the store's media key, `hub.services.media_out`) is
the authorisation; a wrong, missing or expired one is 403, and nothing else of
the hub is reachable with it. The file is served as a download with the type
the hub detected and `nosniff`.
"""

from __future__ import annotations

from typing import Any

from aiohttp import BodyPartReader, web

from hub.api.base import ApiError, Call, error_response
from hub.model import Attachment
from hub.services import conversations, handoff, media, media_out
from hub.services.outbox import OutboxError
from hub.services.runtime import HUB
from hub.shapes import message_view

# The most one reply's files may hold together (the largest channel limit is
# WhatsApp's 100 MB document); each channel's own limits are checked after.
MAX_UPLOAD_BYTES = 100 * 1024 * 1024
MAX_FILES = 10
MAX_TEXT = 10_000  # characters, as a JSON reply's
MAX_SUBJECT = 500
MAX_FIELD_BYTES = 40_000
TEXT_FIELDS = ("text", "private", "subject")


def _too_large() -> ApiError:
    return ApiError(
        413, "too_large", f"the files of one reply may hold at most {MAX_UPLOAD_BYTES} bytes"
    )


async def read_form(
    request: web.Request,
) -> tuple[dict[str, str], list[media_out.Upload]]:
    """The text fields and the files of a multipart reply (400 for anything else)."""
    try:
        reader = await request.multipart()
    except (AssertionError, ValueError, KeyError):
        raise ApiError(400, "bad_request", "the body is not multipart/form-data") from None
    fields: dict[str, str] = {}
    files: list[media_out.Upload] = []
    total = 0
    while True:
        part = await reader.next()
        if part is None:
            break
        if not isinstance(part, BodyPartReader):
            raise ApiError(400, "bad_request", "nested multipart bodies are not read")
        name = part.name or ""
        if name == "file":
            if len(files) >= MAX_FILES:
                raise ApiError(400, "invalid", f"file: at most {MAX_FILES} files per reply")
            chunks: list[bytes] = []
            while chunk := await part.read_chunk(256 * 1024):
                total += len(chunk)
                if total > MAX_UPLOAD_BYTES:
                    raise _too_large()
                chunks.append(chunk)
            data = b"".join(chunks)
            if not data:
                raise ApiError(400, "invalid", f"file: {part.filename or 'a file'} is empty")
            declared = part.headers.get("Content-Type")
            files.append(media_out.Upload(part.filename or None, declared, data))
        elif name in TEXT_FIELDS:
            if name in fields:
                raise ApiError(400, "invalid", f"{name}: given more than once")
            value = await part.read(decode=True)
            if len(value) > MAX_FIELD_BYTES:
                raise ApiError(400, "invalid", f"{name}: too long")
            try:
                fields[name] = value.decode(part.get_charset("utf-8"))
            except (UnicodeDecodeError, LookupError):
                raise ApiError(400, "invalid", f"{name}: not UTF-8 text") from None
        else:
            raise ApiError(400, "invalid", f"{name or 'a part'}: not a field of a reply")
    return fields, files


def _refusal(refused: media_out.FileRefused) -> ApiError:
    """A channel's refusal of a file: 413 over a size limit, else 415."""
    if refused.status == 413:
        return ApiError(413, "too_large", refused.message)
    return ApiError(415, "unsupported_type", refused.message)


def _flag(fields: dict[str, str], name: str) -> bool:
    value = fields.get(name, "false").strip().lower()
    if value not in ("true", "false"):
        raise ApiError(400, "invalid", f"{name}: true or false")
    return value == "true"


async def reply_with_files(call: Call, conversation: dict[str, Any]) -> dict[str, Any]:
    """A multipart reply: its files checked against the channel's limits (413/415
    before anything is stored or queued), kept, and sent (or kept in a note)."""
    fields, files = await read_form(call.request)
    text = (fields.get("text") or "").strip() or None
    subject = (fields.get("subject") or "").strip() or None
    private = _flag(fields, "private")
    if text is None and not files:
        raise ApiError(400, "invalid", "text: Field required (or attach a file)")
    if text is not None and len(text) > MAX_TEXT:
        raise ApiError(400, "invalid", f"text: at most {MAX_TEXT} characters")
    if subject is not None and len(subject) > MAX_SUBJECT:
        raise ApiError(400, "invalid", f"subject: at most {MAX_SUBJECT} characters")
    store, events = call.hub.store, call.hub.events
    assert store is not None and events is not None
    conversation_id = str(conversation["_id"])
    sender = {"type": "agent", "id": call.me.agent_id}
    channel = call.hub.adapters.get(str(conversation.get("inbox")))
    medium = conversation.get("channel")
    if not private:
        if channel is None:
            raise ApiError(409, "reply_refused", "the conversation's inbox is not configured")
        try:
            media_out.check_files(channel, medium, files)
        except media_out.FileRefused as refused:
            raise _refusal(refused) from None
        refusal = channel.reply_refusal_on(
            medium, conversation.get("last_inbound_at"), template=False
        )
        if refusal:
            raise ApiError(409, "reply_refused", refusal)
    kept = await media_out.keep_files(store, conversation_id, files)
    if private:
        note = await conversations.add_note(
            store, events, conversation, text, sender, attachments=kept
        )
        return message_view(note)
    assert channel is not None
    if conversation.get("bot"):
        await handoff.take_over(call.hub, conversation_id, call.me.agent_id)
    # One message per group of files the channel takes at once; the text goes with
    # the first (as its caption, or the channel sends it just before).
    per_message = max(1, channel.files_per_message(medium))
    groups: list[list[Attachment]] = [
        kept[i : i + per_message] for i in range(0, len(kept), per_message)
    ] or [[]]
    first: dict[str, Any] | None = None
    try:
        for index, group in enumerate(groups):
            doc = await call.hub.reply(
                conversation_id,
                text=text if index == 0 else None,
                sender=sender,
                attachments=group,
                subject=subject if index == 0 else None,
            )
            first = first or doc
    except OutboxError:
        if first is None:  # nothing queued: the files are not kept either
            for attachment in kept:
                await media.delete_media(store, str(attachment.id))
        raise
    assert first is not None
    return message_view(first)


async def serve_signed(request: web.Request) -> web.StreamResponse:
    """`GET /media/signed/{id}?exp=&sig=`: the file to whoever holds a valid URL."""
    hub = request.app[HUB]
    media_id = request.match_info["id"]
    exp = request.query.get("exp", "")
    sig = request.query.get("sig", "")
    if hub.store is None:
        return error_response(503, "starting", "the hub is starting")
    key = await media_out.signing_key(hub.store)
    if not media_out.signature_holds(key, media_id, exp, sig):
        return error_response(403, "forbidden", "the link is invalid or has expired")
    found = await media.open_media(hub.store, media_id)
    if found is None or found.id.startswith("staged-"):
        return error_response(404, "not_found", "no such file")
    data = await found.read()
    return web.Response(
        body=data,
        headers={
            "Content-Type": found.content_type,
            "Content-Disposition": "attachment",
            "X-Content-Type-Options": "nosniff",
            "Cache-Control": "private, no-store",
            "Content-Security-Policy": "sandbox; default-src 'none'",
        },
    )


def setup(app: web.Application) -> None:
    app.router.add_get(media_out.SIGNED_PATH + "{id}", serve_signed)
