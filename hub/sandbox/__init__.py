"""The sandbox: the providers' simulators in the providers' place, and a customer-side page.

Off unless the config's `[sandbox] enabled = true`. When on, every inbox it covers
sends to its channel's simulator (`channels/<provider>/simulator.py`, the one the
tests use: Twilio, Telegram, WhatsApp Cloud, an SMTP relay, a PBX), served on
loopback inside the hub process, and the page `/sandbox` lets anyone write as a
customer (or place a call). What the customer writes reaches the hub the
way the provider would deliver it (a signed webhook, an SMTP session), and what
the agents send comes back through the same REST calls and SMTP sessions the
providers take, followed by the delivery callbacks they would post. So the
sandbox runs exactly the code production runs.
"""

from hub.sandbox.core import Line, Sandbox

__all__ = ["Line", "Sandbox"]
