"""Device side of smsgw: the agent that runs on a phone (or a simulator) and talks to the hub.

``PhoneClient`` keeps one WebSocket to the hub, ``PhoneProtocol`` holds the rules of the
device protocol (docs/protocol.md) without I/O, a ``Backend`` sends the SMS (the
``SimulatedBackend`` fakes a radio) and a ``PhoneStore`` keeps what must survive a crash.
"""

from .backend import Backend, DeviceStatus, InboundSms, SendResult, SimInfo
from .client import Backoff, PhoneClient
from .enroll import Enrollment, EnrollmentError, enroll
from .outbox import HeldCommand, JsonPhoneStore, MemoryPhoneStore, PhoneStore
from .protocol import PhoneProtocol
from .simulated import SimulatedBackend, SimulatedConfig

__all__ = [
    "Backend",
    "Backoff",
    "DeviceStatus",
    "Enrollment",
    "EnrollmentError",
    "HeldCommand",
    "InboundSms",
    "JsonPhoneStore",
    "MemoryPhoneStore",
    "PhoneClient",
    "PhoneProtocol",
    "PhoneStore",
    "SendResult",
    "SimInfo",
    "SimulatedBackend",
    "SimulatedConfig",
    "enroll",
]
