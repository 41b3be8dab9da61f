"""The codec: a document's values checked once per encoding, not once per
nesting level, and a document of the plain types the hub writes checked and
encoded in one walk (`patch_codec_validation`, `plain_encode`).

With the wire decoding (`hub.store.engine.wire`), a fifth of the store's CPU per
message.
"""

from __future__ import annotations

import datetime
import threading
from typing import Any

from mongoeco._types._bson_objectid import OBJECT_ID_TYPES, normalize_object_id
from mongoeco.core import codec as codec_module
from mongoeco.core.bson_scalars import (
    INT64_MAX,
    INT64_MIN,
    BsonDouble,
    BsonInt32,
    BsonInt64,
    normalize_utc_bson_datetime,
)
from mongoeco.core.codec import DocumentCodec


class _NotPlain(Exception):
    """A value `plain_encode` leaves to the engine's own codec."""


_NOT_PLAIN = _NotPlain()
_PLAIN_SCALARS = frozenset({str, float, bool, type(None)})
_DOCUMENT_TYPES = frozenset[type]((dict, codec_module._InternalBsonDocument))
_ARRAY_TYPES = frozenset[type]((list, codec_module._InternalBsonArray))
_NUMERIC_TAGS = {BsonInt32: "int32", BsonInt64: "int64", BsonDouble: "double"}
_MARKER = DocumentCodec._MARKER


def plain_encode(value: Any) -> Any:
    """The engine codec's encoding of a document made of the types a hub document
    holds (strings, numbers, booleans, None, datetimes, ObjectIds, the engine's
    number wrappers, dicts and lists), checked as the codec checks them, in one
    walk; `_NotPlain` for anything else (other types, an integer out of int64's
    range, a key that is not a string, a dict that looks like a tagged value), so
    the engine's own codec decides those: the same result or the same error."""
    kind = type(value)
    if kind in _PLAIN_SCALARS:
        return value
    if kind is int:
        if INT64_MIN <= value <= INT64_MAX:
            return value
        raise _NOT_PLAIN
    if kind in _DOCUMENT_TYPES:
        encoded = {}
        for key, item in value.items():
            if type(key) is not str:
                raise _NOT_PLAIN
            encoded[key] = plain_encode(item)
        if _MARKER in encoded:
            raise _NOT_PLAIN
        return encoded
    if kind in _ARRAY_TYPES:
        return [plain_encode(item) for item in value]
    if kind is datetime.datetime:
        return {
            _MARKER: {"type": "datetime", "value": normalize_utc_bson_datetime(value).isoformat()}
        }
    if kind in OBJECT_ID_TYPES:
        return {_MARKER: {"type": "objectid", "value": str(normalize_object_id(value))}}
    tag = _NUMERIC_TAGS.get(kind)
    if tag is not None:
        return {_MARKER: {"type": tag, "value": value.value}}
    raise _NOT_PLAIN


def patch_codec_validation() -> None:
    """Check each document's values once per encoding, not once per level, and
    encode the plain documents the hub writes in one walk.

    The engine's codec re-checks the whole subtree at every document it descends
    into (and each scalar again), so a value three levels down was checked four
    times; and it tries some thirty types on each scalar before it keeps a string
    as it is. A document `plain_encode` can encode is encoded by it; any other is
    checked once, from the top, then encoded by the engine's codec: the same
    values are refused with the same errors."""
    from mongoeco.core import codec

    if getattr(codec, "_hub_validation_patched", False):
        return
    check = codec.validate_bson_value
    encode = codec.DocumentCodec.encode
    state = threading.local()

    def check_outside_encoding(value: object) -> None:
        if not getattr(state, "encoding", False):
            check(value)

    def encode_checked_once(data: Any) -> Any:
        if getattr(state, "encoding", False):
            return encode(data)
        try:
            return plain_encode(data)
        except _NotPlain:
            pass
        check(data)
        state.encoding = True
        try:
            return encode(data)
        finally:
            state.encoding = False

    codec.validate_bson_value = check_outside_encoding
    codec.DocumentCodec.encode = staticmethod(encode_checked_once)  # type: ignore[method-assign]
    codec._hub_validation_patched = True  # type: ignore[attr-defined]
