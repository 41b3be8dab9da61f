"""The hub: config, model, store, ingest, outbox, events, HTTP server and CLI."""
