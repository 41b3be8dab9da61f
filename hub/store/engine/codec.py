"""The codec: a document's values checked once per encoding, not once per
nesting level, and a document of the plain types the hub writes checked and
encoded, or taken into the engine's containers, in one walk
(`patch_codec_validation`, `plain_encode`, `plain_internal`); and a stored
document of those types decoded as it is parsed (`plain_decode`).

With the wire decoding (`hub.store.engine.wire`), a fifth of the store's CPU per
message.
"""

from __future__ import annotations

import datetime
import json
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
from mongoeco.types import ObjectId


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


_INTERNAL_DOCUMENT = codec_module._InternalBsonDocument
_INTERNAL_ARRAY = codec_module._InternalBsonArray


def plain_internal(value: Any) -> Any:
    """`DocumentCodec.to_internal` of a value `plain_encode` encodes, in one walk.

    The engine encodes the value, decodes it again and wraps every dict and list
    in its immutable containers. For the values `plain_encode` accepts that is a
    copy: strings, floats, booleans, None and integers of int64's range come
    back as they are, every dict and list as a new container of the engine's; a
    date, an ObjectId or a number wrapper is converted by the engine's own
    decode of its own encoding. Anything else is `_NotPlain`, as for
    `plain_encode`."""
    kind = type(value)
    if kind in _PLAIN_SCALARS:
        return value
    if kind is int:
        if INT64_MIN <= value <= INT64_MAX:
            return value
        raise _NOT_PLAIN
    if kind in _DOCUMENT_TYPES:
        items = {}
        for key, item in value.items():
            if type(key) is not str:
                raise _NOT_PLAIN
            items[key] = plain_internal(item)
        if _MARKER in items:
            raise _NOT_PLAIN
        return _INTERNAL_DOCUMENT(items)
    if kind in _ARRAY_TYPES:
        return _INTERNAL_ARRAY([plain_internal(item) for item in value])
    if kind is datetime.datetime or kind in OBJECT_ID_TYPES or kind in _NUMERIC_TAGS:
        return DocumentCodec.decode(plain_encode(value), preserve_bson_wrappers=True)
    raise _NOT_PLAIN


_WRAPPERS: dict[str, Any] = {"int32": BsonInt32, "int64": BsonInt64, "double": BsonDouble}
_UNWRAPPED: dict[str, Any] = {"int32": int, "int64": int, "double": float}


def _tag_decoder(numbers: dict[str, Any]) -> Any:
    """The `json.loads` hook of `plain_decode`: a date's, an ObjectId's or a
    number wrapper's tag becomes its value, as the engine's codec decodes it
    (`numbers`: how it decodes the wrappers); any other tag is left to the
    engine's codec (`_NotPlain`), any other object kept as it is."""

    def decode(obj: dict[str, Any]) -> Any:
        if len(obj) == 1 and _MARKER in obj:
            tag = obj[_MARKER]
            if type(tag) is dict and len(tag) == 2 and "type" in tag and "value" in tag:
                kind = tag["type"]
                if kind == "datetime":
                    return datetime.datetime.fromisoformat(tag["value"])
                if kind == "objectid":
                    return ObjectId(tag["value"])
                number = numbers.get(kind)
                if number is None:
                    raise _NOT_PLAIN
                if number is float or number is BsonDouble:
                    return number(float(tag["value"]))
                return number(int(tag["value"]))
        return obj

    return decode


_DECODERS = {True: _tag_decoder(_WRAPPERS), False: _tag_decoder(_UNWRAPPED)}


def plain_decode(payload: str, *, preserve_bson_wrappers: bool = True) -> dict[str, Any] | None:
    """A stored document (the engine's JSON, always an object) decoded as the
    engine's codec decodes it, in the parse: the engine parses it, then walks and
    copies it once more to decode its tagged values, and asks for its decoder's
    signature each time. Dates, ObjectIds and number wrappers (what the hub
    stores) are decoded here; None for a document holding any other tagged value
    (bytes, a Decimal128, a regex), which the engine's own decoding then decides."""
    try:
        document: dict[str, Any] = json.loads(
            payload, object_hook=_DECODERS[bool(preserve_bson_wrappers)]
        )
    except _NotPlain:
        return None
    return document


def patch_codec_validation() -> None:
    """Check each document's values once per encoding, not once per level, and
    encode the plain documents the hub writes in one walk.

    The engine's codec re-checks the whole subtree at every document it descends
    into (and each scalar again), so a value three levels down was checked four
    times; and it tries some thirty types on each scalar before it keeps a string
    as it is. A document `plain_encode` can encode is encoded by it; any other is
    checked once, from the top, then encoded by the engine's codec: the same
    values are refused with the same errors. A command's values crossing into
    the engine (`DocumentCodec.to_internal`: encoded, decoded and wrapped) are
    copied into the engine's containers in one walk where `plain_internal`
    can."""
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

    to_internal = codec.DocumentCodec.to_internal

    def to_internal_plain_first(data: Any) -> Any:
        # Every command's filter, update and documents cross this boundary.
        if isinstance(data, (_INTERNAL_DOCUMENT, _INTERNAL_ARRAY)):
            return data
        try:
            return plain_internal(data)
        except _NotPlain:
            return to_internal(data)

    codec.validate_bson_value = check_outside_encoding
    codec.DocumentCodec.encode = staticmethod(encode_checked_once)  # type: ignore[method-assign]
    codec.DocumentCodec.to_internal = staticmethod(to_internal_plain_first)  # type: ignore[method-assign]
    codec._hub_validation_patched = True  # type: ignore[attr-defined]
