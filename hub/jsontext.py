"""Reading JSON a client or a provider sent, within limits: one reader for the
API's bodies and the channels' webhooks, so both refuse the same things the same
way (`UnreadableJson` says why; each caller answers it in its own error shape)."""

from __future__ import annotations

import json
from typing import Any

# How deep JSON may nest (objects and arrays): the API's request models nest three
# levels and the providers' payloads about ten. Past Python's recursion limit
# `json.loads` raises RecursionError.
MAX_JSON_DEPTH = 64


class UnreadableJson(ValueError):
    """Bytes that are not JSON the hub reads; the message says why."""


def nests_deeper(value: Any, limit: int) -> bool:
    """Whether parsed JSON `value` nests objects and arrays more than `limit` deep
    (a top-level object is 1 deep). Iterative: a deep value cannot exhaust the stack."""
    stack: list[tuple[dict[str, Any] | list[Any], int]] = []
    if isinstance(value, dict | list):
        stack.append((value, 1))
    while stack:
        node, depth = stack.pop()
        if depth > limit:
            return True
        children = node.values() if isinstance(node, dict) else node
        stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return False


def parse_json(data: bytes) -> Any:
    """`data` as JSON, or UnreadableJson: not JSON, nested more than MAX_JSON_DEPTH
    deep, or an integer longer than Python converts (sys.get_int_max_str_digits)."""
    too_deep = f"the body nests deeper than {MAX_JSON_DEPTH} levels"
    try:
        value = json.loads(data)
    except RecursionError:
        raise UnreadableJson(too_deep) from None
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise UnreadableJson("the body is not JSON") from None
    except ValueError:  # int(): more digits than Python converts
        raise UnreadableJson("a number in the body has too many digits") from None
    # Counting brackets is cheap; only a body with that many is walked.
    if data.count(b"[") + data.count(b"{") > MAX_JSON_DEPTH and nests_deeper(value, MAX_JSON_DEPTH):
        raise UnreadableJson(too_deep)
    return value
