"""smsgw: a self-hosted SMS gateway.

Phones (and modem boxes) hold a persistent WebSocket to the hub; backend services call the
hub's REST API; the hub picks a phone, sends the command down its socket, fails over when a
phone does not answer and records every state change before acting on it.
"""

__version__ = "0.1.0"
