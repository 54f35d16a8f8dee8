"""Which phone last sent to each recipient, kept in memory for routing.

The database (``recipient_affinity``) is the record; this LRU mirrors its most recent
entries so a dispatch needs no read. It is warmed from the database at start and updated
on every SENT report of this node. A recipient older than the cache simply gets no
preference: affinity is a routing preference, never a correctness rule.
"""

from __future__ import annotations

from collections import OrderedDict


class AffinityCache:
    def __init__(self, maxsize: int) -> None:
        self.maxsize = maxsize
        self._entries: OrderedDict[str, str] = OrderedDict()

    def get(self, recipient: str) -> str | None:
        return self._entries.get(recipient)

    def put(self, recipient: str, device_id: str) -> None:
        self._entries[recipient] = device_id
        self._entries.move_to_end(recipient)
        if len(self._entries) > self.maxsize:
            self._entries.popitem(last=False)

    def warm(self, newest_first: list[tuple[str, str]]) -> None:
        for recipient, device_id in reversed(newest_first):
            self.put(recipient, device_id)

    def forget_device(self, device_id: str) -> None:
        for recipient in [r for r, d in self._entries.items() if d == device_id]:
            del self._entries[recipient]

    def __len__(self) -> int:
        return len(self._entries)
