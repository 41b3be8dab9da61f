"""`GET /api/reports/summary` on a small crafted data set whose medians are known
(issue 4, point 5)."""

from __future__ import annotations

from datetime import UTC, datetime

from hub.services.reports import percentile
from tests.api.conftest import accounts, hub, make_agent


def at(day: int, hour: int, minute: int = 0, second: int = 0) -> datetime:
    return datetime(2024, 3, day, hour, minute, second, tzinfo=UTC)


def conv(cid, channel, opened, *, status="open", assignee=None, **extra):
    return {
        "_id": cid,
        "inbox": "t1",
        "channel": channel,
        "contact_id": "k" + cid,
        "status": status,
        "assignee_id": assignee,
        "created_at": opened,
        "last_activity_at": opened,
        **extra,
    }


def msg(mid, cid, channel, direction, when, sender_type="contact", sender_id=None, kind="text"):
    return {
        "_id": mid,
        "conversation_id": cid,
        "inbox": "t1",
        "channel": channel,
        "direction": direction,
        "kind": kind,
        "text": "x",
        "sender": {"type": sender_type, "id": sender_id},
        "created_at": when,
    }


async def _crafted(api):
    """Two days (1 and 2 March 2024); A and B are agents. First responses: 60 s (A),
    180 s (B), 300 s (A) and 87 000 s (B, a day after the range); one conversation
    unanswered. Resolutions: 3 600 s (A, resolved_at) and 1 800 s (B, estimated
    from its last activity)."""
    a = await accounts(api).create_agent(
        email="a@x.com", name="Ann", role="agent", password="p" * 8
    )
    b = await accounts(api).create_agent(
        email="b@x.com", name="Bob", role="agent", password="p" * 8
    )
    a_id, b_id = a["_id"], b["_id"]
    store = hub(api).store
    await store.conversations.insert_many(
        [
            conv("c1", "sms", at(1, 10), status="resolved", assignee=a_id, resolved_at=at(1, 11)),
            conv(
                "c2",
                "sms",
                at(1, 12),
                status="resolved",
                assignee=b_id,
                last_activity_at=at(1, 12, 30),
            ),
            conv("c3", "whatsapp", at(2, 9), assignee=a_id),
            conv("c4", "email", at(2, 15)),
            conv("c5", "email", at(2, 16)),
            conv("old", "sms", datetime(2024, 2, 20, tzinfo=UTC)),
            conv("later", "sms", at(3, 1)),
        ]
    )
    await store.messages.insert_many(
        [
            # the conversation's first message is stamped a moment before it opens
            msg("m1", "c1", "sms", "in", datetime(2024, 3, 1, 9, 59, 59, 500000, tzinfo=UTC)),
            msg(
                "m2",
                "c1",
                "sms",
                "out",
                at(1, 10, 0, 59).replace(microsecond=500000),
                "agent",
                a_id,
            ),
            msg("m3", "c2", "sms", "in", at(1, 12)),
            msg("m4", "c2", "sms", "out", at(1, 12, 0, 30), "agent", a_id, kind="note"),
            msg("m5", "c2", "sms", "out", at(1, 12, 3), "agent", b_id),
            msg("m6", "c3", "whatsapp", "in", at(2, 9)),
            msg("m7", "c3", "whatsapp", "in", at(2, 9, 2)),
            msg("m8", "c3", "whatsapp", "out", at(2, 9, 5), "agent", a_id),
            msg("m9", "c4", "email", "in", at(2, 15)),
            msg("m10", "c4", "email", "out", at(3, 15, 10), "agent", b_id),
            msg("m11", "c5", "email", "in", at(2, 16)),
            msg("m12", "c5", "email", "out", at(2, 16, 1), "bot", None),
            msg("m13", "old", "sms", "in", at(1, 8)),
            msg("m14", "old", "sms", "out", at(1, 8, 5), "agent", a_id),
            msg("m15", "later", "sms", "in", at(3, 1)),
        ]
    )
    return a_id, b_id


async def test_summary_counts_volumes_and_times_on_a_known_data_set(api):
    a_id, b_id = await _crafted(api)
    boss = await make_agent(api, "supervisor")
    resp = await api.get("/api/reports/summary?from=2024-03-01&to=2024-03-02", headers=boss.auth)
    assert resp.status == 200, await resp.text()
    report = await resp.json()
    assert report["from"] == "2024-03-01" and report["to"] == "2024-03-02"
    assert report["days"] == [
        {
            "date": "2024-03-01",
            "channels": {"sms": {"conversations": 2, "messages_in": 3, "messages_out": 3}},
        },
        {
            "date": "2024-03-02",
            "channels": {
                "whatsapp": {"conversations": 1, "messages_in": 2, "messages_out": 1},
                "email": {"conversations": 2, "messages_in": 2, "messages_out": 1},
            },
        },
    ]
    totals = report["totals"]
    assert (totals["conversations"], totals["messages_in"], totals["messages_out"]) == (5, 7, 5)
    assert totals["by_channel"]["email"] == {
        "conversations": 2,
        "messages_in": 2,
        "messages_out": 1,
    }
    # 60, 180, 300, 87 000: the median between 180 and 300, p90 at 2.7 ranks
    assert report["first_response"] == {
        "count": 4,
        "median": 240.0,
        "p90": 60990.0,
        "unanswered": 1,
    }
    assert report["resolution"] == {"count": 2, "median": 2700.0, "p90": 3420.0, "estimated": 1}
    agents = {row["id"]: row for row in report["agents"]}
    assert set(agents) == {a_id, b_id}
    ann, bob = agents[a_id], agents[b_id]
    assert ann["name"] == "Ann" and ann["email"] == "a@x.com"
    assert (ann["replies"], ann["notes"], ann["conversations_assigned"]) == (3, 1, 2)
    assert ann["conversations_resolved"] == 1
    assert ann["first_response"] == {"count": 2, "median": 180.0, "p90": 276.0}
    assert ann["resolution"] == {"count": 1, "median": 3600.0, "p90": 3600.0}
    assert (bob["replies"], bob["notes"], bob["conversations_assigned"]) == (1, 0, 1)
    assert bob["first_response"]["count"] == 2
    assert bob["first_response"]["median"] == (180 + 87000) / 2
    assert bob["resolution"] == {"count": 1, "median": 1800.0, "p90": 1800.0}
    assert report["agents"][0]["id"] == a_id  # the busiest first


async def test_an_empty_range_lists_every_day_with_no_times(api):
    boss = await make_agent(api, "admin")
    resp = await api.get("/api/reports/summary?from=2023-12-30&to=2024-01-02", headers=boss.auth)
    report = await resp.json()
    assert [d["date"] for d in report["days"]] == [
        "2023-12-30",
        "2023-12-31",
        "2024-01-01",
        "2024-01-02",
    ]
    assert all(d["channels"] == {} for d in report["days"])
    assert report["first_response"] == {"count": 0, "median": None, "p90": None, "unanswered": 0}
    assert report["agents"] == []
    default = await (await api.get("/api/reports/summary", headers=boss.auth)).json()
    assert len(default["days"]) == 7


async def test_bad_ranges_are_400(api):
    boss = await make_agent(api, "supervisor")
    for query in (
        "from=2024-03-02&to=2024-03-01",
        "from=2023-01-01&to=2024-01-02",
        "from=yesterday",
        "from=2024-02-30",
        "to=2024-03-01T00:00:00Z%24",
        "from=2024-03-01&from=2024-03-02",
        "since=2024-03-01",
    ):
        resp = await api.get(f"/api/reports/summary?{query}", headers=boss.auth)
        assert resp.status == 400, query
        assert (await resp.json())["error"]["code"] == "invalid"
    ok = await api.get("/api/reports/summary?from=2023-01-02&to=2024-01-02", headers=boss.auth)
    assert ok.status == 200  # 366 days


async def test_agents_get_403_and_strangers_401(api):
    agent = await make_agent(api)
    assert (await api.get("/api/reports/summary")).status == 401
    resp = await api.get("/api/reports/summary", headers=agent.auth)
    assert resp.status == 403


def test_percentiles_interpolate_between_ranks():
    assert percentile([], 50) is None
    assert percentile([5], 90) == 5
    assert percentile([4, 1, 3, 2], 50) == 2.5
    assert percentile(list(range(1, 11)), 90) == 9.1
