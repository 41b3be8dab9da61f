"""Reports: volumes per channel per day, first response and resolution times, per agent."""

from __future__ import annotations

from hub.api.base import RouteTable

table = RouteTable()
