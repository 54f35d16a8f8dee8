"""Records the unit tests build again and again: a new message, a live phone."""

from __future__ import annotations

from datetime import timedelta

from smsgw.clock import new_id, utcnow
from smsgw.registry import LiveDevice
from smsgw.session import Session
from smsgw.store import Message, Status


def new_message(**kw: object) -> Message:
    """A PENDING message due now, expiring in an hour; ``kw`` overrides any field."""
    now = utcnow()
    msg = Message(
        id=new_id(),
        recipient="+12025551111",
        body="hi",
        status=Status.PENDING,
        created_at=now,
        updated_at=now,
        expires_at=now + timedelta(hours=1),
    )
    for k, v in kw.items():
        setattr(msg, k, v)
    return msg


def live_device(session: Session, device_id: str, *, max_in_flight: int = 1) -> LiveDevice:
    """An enabled, charged phone with good signal, behind ``session``."""
    return LiveDevice(
        session=session,
        device_id=device_id,
        name=device_id,
        enabled=True,
        daily_quota=1000,
        max_in_flight=max_in_flight,
        battery=80,
        charging=True,
        signal=4,
        network=None,
        sims=[],
    )
