"""Prometheus metrics, one registry per application (tests run several at once)."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.messages_in = Counter(
            "hub_messages_in_total", "Inbound messages stored", ["channel"], registry=self.registry
        )
        self.duplicates_in = Counter(
            "hub_messages_duplicate_total",
            "Inbound provider retries of messages already stored",
            ["channel"],
            registry=self.registry,
        )
        self.messages_out = Counter(
            "hub_messages_out_total",
            "Outbound messages accepted by the provider",
            ["channel"],
            registry=self.registry,
        )
        self.send_errors = Counter(
            "hub_send_errors_total",
            "Outbound send errors by kind (transient, permanent, unknown)",
            ["channel", "kind"],
            registry=self.registry,
        )
        self.ingest_seconds = Histogram(
            "hub_ingest_seconds",
            "Time from a webhook's hand-over to ingest until its message is durable",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
            registry=self.registry,
        )
        self.ingest_batch = Histogram(
            "hub_ingest_batch_size",
            "Messages written per group commit",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512),
            registry=self.registry,
        )
        self.outbox_depth = Gauge(
            "hub_outbox_depth", "Outbound messages waiting to be sent", registry=self.registry
        )
        self.store_commands = Gauge(
            "hub_store_commands",
            "Commands sent to the store by this process",
            registry=self.registry,
        )

    def track_store_commands(self, read: Callable[[], int]) -> None:
        self.store_commands.set_function(lambda: float(read()))

    def render(self) -> bytes:
        return generate_latest(self.registry)
