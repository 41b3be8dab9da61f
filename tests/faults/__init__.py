"""Fault-injection tests: real processes killed, stopped and resumed, real
providers that fail; each asserts that nothing the hub acknowledged is lost."""
