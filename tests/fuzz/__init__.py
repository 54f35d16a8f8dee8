"""Fuzzing (issue 21): property tests of both device-protocol state machines, and live
fuzzers over real sockets against the device WebSocket and the app-phone API.

Budgets are small so the normal suite stays fast; ``tests/fuzz/budget.py`` says how to
run longer (docs/testing.md)."""
