"""A ChannelContext for adapters built outside a hub (checks that run before
anything reaches it): every call into the hub fails the test."""

from __future__ import annotations

import logging
from typing import Any

from channels import ChannelContext


def detached_context() -> ChannelContext:
    async def never(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the adapter must not reach the hub here")

    return ChannelContext(
        ingest=never,
        record_status=never,
        http=never,  # type: ignore[arg-type]
        public_url="http://127.0.0.1",
        default_region="US",
        logger=logging.getLogger("test"),
        find_thread=never,
        opt_out=never,
        call_incoming=never,
        send_text=never,
        update_contact=never,
        publish=never,
    )
