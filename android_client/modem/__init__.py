"""GSM modem backend for the agent: AT commands over a serial port, SMS in PDU mode.

``ModemBackend(ModemConfig(port="/dev/ttyUSB2"))`` is a ``Backend`` like the simulated
one; ``await backend.start()`` checks the modem and raises ``ModemError`` with what to fix.
See docs/modems.md for setting up modems on a Raspberry Pi.
"""

from .backend import ModemBackend, ModemConfig, ModemInfo, signal_bars
from .errors import AtError, AtTimeout, ChannelClosed, ModemError

__all__ = [
    "AtError",
    "AtTimeout",
    "ChannelClosed",
    "ModemBackend",
    "ModemConfig",
    "ModemError",
    "ModemInfo",
    "signal_bars",
]
