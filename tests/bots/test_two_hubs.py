"""Two real `hub serve` processes on one store, a flow bot on their inbox: every
customer message, posted to one hub and retried to the other at the same time,
is answered once, and each answer reaches the provider once."""

from __future__ import annotations

import asyncio
from collections import Counter

from tests.bots.conftest import SHOP_FLOW
from tests.faults.harness import INBOX, HubProcess, Provider, write_config
from tests.multihub.conftest import Cluster
from tests.support.waiting import eventually

CUSTOMERS = 12


def bot_hub(cluster: Cluster, name: str) -> HubProcess:
    config = write_config(
        cluster.root / name,
        uri=cluster.uri,
        database=cluster.database,
        data_dir=str(cluster.data_dir),
        inbox_lines=f'api_base = "{cluster.provider.url}"\nrate = 200\n',
        sections=(
            "\n[dispatcher]\npoll_interval = 0.1\nbackoff_base = 0.1\nbackoff_max = 0.5\n"
            "inbox_lease_seconds = 2\n\n[events]\npoll_interval = 0.05\n"
            f'\n[[bots]]\nid = "shop"\nkind = "flow"\ninboxes = ["{INBOX}"]\n'
            f'flow = "{SHOP_FLOW}"\n'
        ),
    )
    hub = HubProcess(config)
    cluster.hubs.append(hub)
    return hub


async def test_two_hubs_answer_every_message_once(cluster: Cluster) -> None:
    a = await cluster.start(bot_hub(cluster, "a"))
    b = await cluster.start(bot_hub(cluster, "b"))
    to_a, to_b = Provider(cluster.session, a.webhook), Provider(cluster.session, b.webhook)
    rounds = ["hi", "2"]
    sids: list[str] = []
    for turn, _text in enumerate(rounds):
        posts = []
        for n in range(CUSTOMERS):
            sid = f"SMbot{turn}x{n:03d}"
            sids.append(sid)
            # The same webhook to both hubs at once (a provider's retry), which
            # of them goes first changing from one customer to the next.
            first, second = (to_a, to_b) if n % 2 else (to_b, to_a)
            first.message(sid, n)
            second.message(sid, n)
            posts += [first.deliver([sid]), second.deliver([sid])]
        await asyncio.gather(*posts)
        await asyncio.sleep(0.3)  # the next round after this one's turns began

    store = await cluster.store()

    async def bot_texts() -> list[dict[str, object]]:
        return await store.messages.find({"inbox": INBOX, "sender.type": "bot"}).to_list()

    replies = await eventually(
        bot_texts, lambda found: len(found) >= CUSTOMERS * len(rounds), deadline=30
    )
    await asyncio.sleep(1.0)  # time for a second answer, were there one
    replies = await bot_texts()
    assert len(replies) == CUSTOMERS * len(rounds)
    assert await store.messages.count_documents({"inbox": INBOX, "direction": "in"}) == len(sids)
    turns = await store.bot_turns.find({}).to_list()
    assert len(turns) == len(sids) and {t["state"] for t in turns} == {"done"}
    per_conversation = Counter(str(r["conversation_id"]) for r in replies)
    assert set(per_conversation.values()) == {len(rounds)}
    sends = await eventually(
        lambda: asyncio.sleep(0, cluster.sends()),
        lambda found: sum(found.values()) >= CUSTOMERS * len(rounds),
        deadline=30,
    )
    assert set(sends.values()) == {1}  # each answer reached the provider once
