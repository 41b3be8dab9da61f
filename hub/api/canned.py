"""Canned responses: short texts agents insert with /shortcut; admins manage them."""

from __future__ import annotations

from hub.api.base import RouteTable

table = RouteTable()
