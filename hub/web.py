"""The page at `/status`: what this hub is
running and the webhook address to give each provider."""

from __future__ import annotations

import html

from aiohttp import web


def webhook_urls(public_url: str, channel: str, inbox_id: str) -> str:
    return f"{public_url}/webhooks/{channel}/{inbox_id}"


def status_page(public_url: str, inboxes: list[tuple[str, str]], store: str) -> str:
    rows = "\n".join(
        f"<tr><td>{html.escape(inbox)}</td><td>{html.escape(channel)}</td>"
        f"<td><code>{html.escape(webhook_urls(public_url, channel, inbox))}</code></td></tr>"
        for inbox, channel in inboxes
    )
    body = (
        f"<table><tr><th>inbox</th><th>channel</th><th>webhook</th></tr>{rows}</table>"
        if inboxes
        else "<p>No inboxes are configured yet: add <code>[[inboxes]]</code> to the config.</p>"
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Hub</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>body{{font:15px system-ui,sans-serif;margin:2rem;max-width:60rem}}
td,th{{padding:.3rem .8rem;text-align:left;border-bottom:1px solid #ddd}}</style></head>
<body><h1>The hub is running</h1>
<p>Store: {html.escape(store)}. Health: <a href="/healthz">/healthz</a>,
<a href="/readyz">/readyz</a>, <a href="/metrics">/metrics</a>.</p>
{body}</body></html>"""


def status_response(public_url: str, inboxes: list[tuple[str, str]], store: str) -> web.Response:
    return web.Response(
        text=status_page(public_url, inboxes, store),
        content_type="text/html",
        headers={"Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'"},
    )
