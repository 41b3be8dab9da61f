"""ChannelContexts for adapters in tests: one built outside a hub (checks that run
before anything reaches it: every call into the hub fails the test), and one that
wraps a hub's own with one operation replaced."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from hub.ports import ChannelContext


class _Detached:
    public_url = "http://127.0.0.1"
    default_region = "US"
    logger = logging.getLogger("test")

    def __getattr__(self, name: str) -> Callable[..., Any]:
        async def never(*args: Any, **kwargs: Any) -> Any:
            raise AssertionError("the adapter must not reach the hub here")

        return never


def detached_context() -> ChannelContext:
    return _Detached()  # type: ignore[return-value]


class _Replaced:
    def __init__(self, inner: ChannelContext, replaced: dict[str, Any]) -> None:
        self._inner = inner
        self.__dict__.update(replaced)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def replaced(ctx: ChannelContext, **operations: Any) -> ChannelContext:
    """`ctx` with the named operations (`ingest=...`) replaced."""
    return _Replaced(ctx, operations)  # type: ignore[return-value]
