"""The page at `/status`: what this hub is
running and the webhook address to give each provider."""

from __future__ import annotations

import html

from aiohttp import web

InboxRow = tuple[str, str, list[str]]  # inbox id, channel name, its webhook URLs


def status_page(inboxes: list[InboxRow], store: str) -> str:
    """The page; each inbox's URLs come from its adapter (`webhook_urls`)."""
    rows = "\n".join(
        f"<tr><td>{html.escape(inbox)}</td><td>{html.escape(channel)}</td><td>"
        + "<br>".join(f"<code>{html.escape(url)}</code>" for url in urls)
        + "</td></tr>"
        for inbox, channel, urls in inboxes
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


def status_response(inboxes: list[InboxRow], store: str) -> web.Response:
    return web.Response(
        text=status_page(inboxes, store),
        content_type="text/html",
        headers={"Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'"},
    )
