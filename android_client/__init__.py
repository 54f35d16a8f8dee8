"""Device side of smsgw: the agent that runs on a phone (or a modem box, or a simulator).

``PhoneClient`` keeps one WebSocket to the hub, ``PhoneProtocol`` holds the rules of the
device protocol (docs/protocol.md) without I/O, a ``Backend`` sends the SMS
(``TermuxBackend`` on a real phone, the modem backend in ``modem/``, ``SimulatedBackend``
fakes a radio), a ``Pacer`` spaces sends and enforces the daily cap, and a ``PhoneStore``
(``SqlitePhoneStore`` for the agent) keeps what must survive a crash. ``agent`` is the
``smsgw-agent`` command (docs/android.md).
"""

__version__ = "0.1.0"  # as android_client/pyproject.toml says

from .backend import Backend, BackendError, DeviceStatus, InboundSms, SendResult, SimInfo
from .client import Backoff, ConnectionEvent, PhoneClient
from .enroll import Enrollment, EnrollmentError, enroll
from .outbox import HeldCommand, JsonPhoneStore, MemoryPhoneStore, PhoneStore
from .pacing import Pacer
from .protocol import PhoneProtocol, Refusal
from .simulated import SimulatedBackend, SimulatedConfig
from .state import SqlitePhoneStore
from .termux import TermuxBackend, TermuxConfig

__all__ = [
    "Backend",
    "BackendError",
    "Backoff",
    "ConnectionEvent",
    "DeviceStatus",
    "Enrollment",
    "EnrollmentError",
    "HeldCommand",
    "InboundSms",
    "JsonPhoneStore",
    "MemoryPhoneStore",
    "Pacer",
    "PhoneClient",
    "PhoneProtocol",
    "PhoneStore",
    "Refusal",
    "SendResult",
    "SimInfo",
    "SimulatedBackend",
    "SimulatedConfig",
    "SqlitePhoneStore",
    "TermuxBackend",
    "TermuxConfig",
    "enroll",
]
