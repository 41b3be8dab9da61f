"""Media out: an agent's files, kept in the hub's file storage (`hub.services.media`)
and sent through the conversation's channel.

- `check_files`: each channel's limits (`Channel.refuse_file`) asked of every
  file before anything is stored or queued (413/415 naming the limit).
- `keep_files`: the files stored (GridFS, the conversation named so the media
  route authorises them) and answered as the message's attachments.
- `read_file`: the bytes of a kept file, for a channel that uploads them.
- Signed URLs, for a provider that fetches outbound files itself (Twilio's
  `MediaUrl`): `/media/signed/{id}?exp=<unix time>&sig=<hex HMAC-SHA256>`, under
  `public_url`, answered without a login while `exp` is ahead and the signature
  holds (compared in constant time). The key is kept in the store (`settings`,
  `_id` "media_signing"), so every hub process on one store signs alike.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass

from hub.model import Attachment
from hub.ports import Channel, FileRefusal, OutboundFile
from hub.services import media
from hub.store import Store

SIGNED_PATH = "/media/signed/"
SIGNED_TTL = 3600  # seconds a signed URL stays valid (the provider fetches at once)
KEY_ID = "media_signing"


@dataclass(frozen=True)
class Upload:
    """A file an agent attached: its name, the type the browser declared, its bytes."""

    name: str | None
    declared_type: str | None
    data: bytes

    @property
    def content_type(self) -> str:
        return media.sniff(self.data)


class FileRefused(Exception):
    def __init__(self, refusal: FileRefusal) -> None:
        super().__init__(refusal.message)
        self.status = refusal.status
        self.message = refusal.message


def check_files(channel: Channel, medium: str | None, files: Sequence[Upload]) -> None:
    """FileRefused for the first file the channel cannot send (nothing is stored)."""
    for upload in files:
        refusal = channel.refuse_file(medium, upload.name, upload.content_type, len(upload.data))
        if refusal is not None:
            label = f"{upload.name}: " if upload.name else ""
            raise FileRefused(FileRefusal(refusal.status, label + refusal.message))


async def keep_files(
    store: Store, conversation_id: str, files: Sequence[Upload]
) -> list[Attachment]:
    """Store the files; the attachments of the message that carries them."""
    kept: list[Attachment] = []
    for upload in files:
        saved = await media.save(
            store,
            upload.data,
            name=upload.name,
            declared_type=upload.declared_type,
            conversation_id=conversation_id,
            message_id=None,
        )
        kept.append(
            Attachment(
                id=saved["id"],
                url=saved["url"],
                name=saved["name"],
                content_type=saved["content_type"],
                size=saved["size"],
            )
        )
    return kept


async def read_file(store: Store, attachment: Attachment) -> OutboundFile:
    """The bytes of a kept file; LookupError when it is gone."""
    media_id = attachment.id or attachment.url.removeprefix("/api/media/")
    found = await media.open_media(store, media_id)
    if found is None:
        raise LookupError(f"the file {media_id} is no longer stored")
    return OutboundFile(await found.read(), found.name or attachment.name, found.content_type)


# -- signed URLs ---------------------------------------------------------------------

async def signing_key(store: Store) -> bytes:
    """The store's media signing key (made once, shared by every hub process; read
    on each use, one small read beside a file's transfer)."""
    doc = await store.settings.find_one({"_id": KEY_ID})
    if doc is None:
        await store.settings.update_one(
            {"_id": KEY_ID}, {"$setOnInsert": {"key": secrets.token_hex(32)}}, upsert=True
        )
        doc = await store.settings.find_one({"_id": KEY_ID})
    assert doc is not None
    return bytes.fromhex(str(doc["key"]))


def signature(key: bytes, media_id: str, expires: int) -> str:
    return hmac.new(key, f"{media_id}.{expires}".encode(), hashlib.sha256).hexdigest()


def signed_url(
    key: bytes, public_url: str, media_id: str, *, ttl: int = SIGNED_TTL, now: float | None = None
) -> str:
    expires = int((time.time() if now is None else now) + ttl)
    sig = signature(key, media_id, expires)
    return f"{public_url.rstrip('/')}{SIGNED_PATH}{media_id}?exp={expires}&sig={sig}"


def signature_holds(
    key: bytes, media_id: str, exp: str, sig: str, now: float | None = None
) -> bool:
    """Whether `sig` signs `media_id` until `exp` and `exp` is still ahead."""
    if not exp.isdigit() or len(exp) > 12:
        return False
    if int(exp) <= (time.time() if now is None else now):
        return False
    wanted = signature(key, media_id, int(exp))
    return hmac.compare_digest(wanted.encode(), sig.encode())
