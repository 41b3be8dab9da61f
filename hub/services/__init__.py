"""The hub's operations, by subject: the one place that reads and writes the store.

Channels, API handlers, bots and scheduled jobs all call these; none of them
queries a collection itself.
"""
