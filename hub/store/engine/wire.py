"""The wire layer keeps plain decoded values as they are, without trying a dozen
BSON types on each (`patch_wire_decoding`), and encodes plain values of its
answers the same way (`patch_wire_encoding`).

With the codec's single check (`hub.store.engine.codec`), a fifth of the store's
CPU per message.
"""

from __future__ import annotations

import datetime
from typing import Any

_WIRE_PLAIN = frozenset({str, int, float, bool, type(None), datetime.datetime})


def patch_wire_decoding() -> None:
    """Decode the wire's documents without trying a dozen BSON types on each
    string, number and date.

    The wire layer turns each decoded BSON value into the engine's own types;
    a plain dict, list, string, integer, float, boolean, None or datetime it
    keeps as it is (an `Int64` is an int of another type, and goes to the engine
    as before). Those are answered first here; every other value is handed to
    the engine's own function."""
    from mongoeco.wire import protocol

    if getattr(protocol, "_hub_decoding_patched", False):
        return
    engine_decode = protocol.decode_wire_value

    def decode_wire_value(value: Any) -> Any:
        kind = type(value)
        if kind is dict:
            return {key: decode_wire_value(item) for key, item in value.items()}
        if kind is list:
            return [decode_wire_value(item) for item in value]
        if kind in _WIRE_PLAIN:
            return value
        return engine_decode(value)

    protocol.decode_wire_value = decode_wire_value
    protocol._hub_decoding_patched = True  # type: ignore[attr-defined]


def patch_wire_encoding() -> None:
    """Encode the wire's answers without trying two dozen types on each string,
    number and date of every document read.

    Before BSON encodes an answer, the wire layer turns each value of the
    engine's types into a BSON one; a plain dict, list, string, integer,
    float, boolean, None or datetime it returns as it is (exactly these types:
    a subclass, an `Int64` say, goes to the engine's function). Those are
    answered first here; every other value is handed to the engine's own
    function."""
    from mongoeco.wire import protocol

    if getattr(protocol, "_hub_encoding_patched", False):
        return
    engine_encode = protocol.encode_wire_value

    def encode_wire_value(value: Any) -> Any:
        kind = type(value)
        if kind is dict:
            return {key: encode_wire_value(item) for key, item in value.items()}
        if kind is list:
            return [encode_wire_value(item) for item in value]
        if kind in _WIRE_PLAIN:
            return value
        return engine_encode(value)

    protocol.encode_wire_value = encode_wire_value
    protocol._hub_encoding_patched = True  # type: ignore[attr-defined]
