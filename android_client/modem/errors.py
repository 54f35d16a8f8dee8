"""Errors of the GSM modem backend and readable texts for modem error codes.

``+CME ERROR`` codes are from 3GPP TS 27.007 §9.2, ``+CMS ERROR`` codes from TS 27.005
§3.2.5 (1-127 are network causes from TS 24.011, 128-255 TPDU causes from TS 23.040).
``SEND_PERMANENT`` says which ``+CMS ERROR`` codes are about the message or its recipient,
so retrying from another phone cannot help.
"""

from __future__ import annotations

from ..backend import BackendError

CME_ERRORS: dict[int, str] = {
    0: "phone failure",
    1: "no connection to phone",
    3: "operation not allowed",
    4: "operation not supported",
    5: "PH-SIM PIN required",
    10: "SIM not inserted",
    11: "SIM PIN required",
    12: "SIM PUK required",
    13: "SIM failure",
    14: "SIM busy",
    15: "SIM wrong",
    16: "incorrect password",
    17: "SIM PIN2 required",
    18: "SIM PUK2 required",
    20: "memory full",
    21: "invalid index",
    22: "not found",
    23: "memory failure",
    24: "text string too long",
    25: "invalid characters in text string",
    30: "no network service",
    31: "network timeout",
    32: "network not allowed - emergency calls only",
    100: "unknown error",
}

CMS_ERRORS: dict[int, str] = {
    1: "unassigned (unallocated) number",
    8: "operator determined barring",
    10: "call barred",
    21: "short message transfer rejected",
    27: "destination out of service",
    28: "unidentified subscriber",
    29: "facility rejected",
    30: "unknown subscriber",
    38: "network out of order",
    41: "temporary failure",
    42: "congestion",
    47: "resources unavailable",
    50: "requested facility not subscribed",
    69: "requested facility not implemented",
    81: "invalid short message transfer reference value",
    95: "invalid message",
    96: "invalid mandatory information",
    97: "message type non-existent or not implemented",
    98: "message not compatible with short message protocol state",
    99: "information element non-existent or not implemented",
    111: "protocol error",
    127: "interworking error",
    128: "telematic interworking not supported",
    129: "short message type 0 not supported",
    130: "cannot replace short message",
    143: "unspecified TP-PID error",
    144: "data coding scheme (alphabet) not supported",
    145: "message class not supported",
    159: "unspecified TP-DCS error",
    160: "command cannot be actioned",
    161: "command unsupported",
    175: "unspecified TP-Command error",
    176: "TPDU not supported",
    192: "service centre busy",
    193: "no service centre subscription",
    194: "service centre system failure",
    195: "invalid recipient address",
    196: "recipient barred",
    197: "message rejected as a duplicate",
    198: "TP-VPF not supported",
    199: "TP-VP not supported",
    208: "SIM SMS storage full",
    209: "no SMS storage capability in SIM",
    210: "error in MS",
    211: "memory capacity exceeded",
    212: "SIM application toolkit busy",
    213: "SIM data download error",
    255: "unspecified error",
    300: "ME failure",
    301: "SMS service of ME reserved",
    302: "operation not allowed",
    303: "operation not supported",
    304: "invalid PDU mode parameter",
    305: "invalid text mode parameter",
    310: "SIM not inserted",
    311: "SIM PIN required",
    312: "PH-SIM PIN required",
    313: "SIM failure",
    314: "SIM busy",
    315: "SIM wrong",
    316: "SIM PUK required",
    317: "SIM PIN2 required",
    318: "SIM PUK2 required",
    320: "memory failure",
    321: "invalid memory index",
    322: "memory full",
    330: "SMSC address unknown",
    331: "no network service",
    332: "network timeout",
    340: "no +CNMA acknowledgement expected",
    500: "unknown error",
}

# The message or its recipient is at fault: another phone would fail the same way.
# Everything else (network, SIM, credit, modem state) may work elsewhere or later.
SEND_PERMANENT: frozenset[int] = frozenset(
    {1, 95, 96, 97, 99, 128, 129, 143, 144, 145, 159, 176, 195, 196, 197, 304}
)
INVALID_NUMBER_CODES: frozenset[int] = frozenset({1, 195})


class ModemError(BackendError):
    """The modem cannot do what was asked; the message says what and, if known, why."""


class AtError(ModemError):
    """The modem answered ``ERROR``, ``+CME ERROR: n`` or ``+CMS ERROR: n``."""

    def __init__(self, command: str, kind: str | None, code: int | None, text: str) -> None:
        self.command = command
        self.kind = kind  # "CME", "CMS" or None for a bare ERROR
        self.code = code
        self.text = text
        label = f"+{kind} ERROR {code}" if kind and code is not None else (kind or "ERROR")
        super().__init__(f"{command}: {label} ({text})" if text else f"{command}: {label}")


class AtTimeout(ModemError):
    """The modem did not finish answering a command in time. ``pdu_written``: it had
    taken an SMS (prompt, PDU, Ctrl-Z) when it went silent, so the SMS may be out."""

    def __init__(self, message: str, *, pdu_written: bool = False) -> None:
        super().__init__(message)
        self.pdu_written = pdu_written


class ChannelClosed(ModemError):
    """The serial port is gone (unplugged, closed) or could not be opened."""


def error_text(kind: str | None, code: int | None) -> str:
    if code is None:
        return ""
    table = CMS_ERRORS if kind == "CMS" else CME_ERRORS
    return table.get(code, "manufacturer specific" if code >= 512 else "unknown code")
