"""The phones a node can route to, filed in the order routing prefers them.

``routing.pick()`` looks at every phone, about 1.5 µs each on this project's machine:
with a farm of 1,000 phones that is 1.7 ms per dispatch, more than all the rest of it.
A Roster files each phone under its preference tier (signal, then battery: the order
``routing.pick()`` ranks by) and, inside a tier, by when it was last offered a message.
A pick walks from the best tier's least recently used phone and stops at the first one
it may use, so it returns what ``routing.pick()`` returns over the same phones, usually
after looking at one or two of them.

Eligibility (in flight, daily quota, enabled) is checked during the walk rather than
filed, because it changes with every offer and report. The phones that are busy were used
most recently and sit at the back of their tier, so a walk rarely meets them. A phone
that is *spent* (``routing.spent()``: disabled, or its day's quota used up) would stay
near the front, unused, and every pick would step over it: with most of a farm at its
daily cap, as a busy farm is by evening, that is the cost of looking at every phone
again. So a walk that meets a spent phone sets it aside ("parked"), and it comes back
when something that can end that changes: an admin's change (``LiveDevice.configure()``),
any refile, or a new day (the first pick of a day takes every parked phone back).

A phone's place is kept up to date by ``LiveDevice.set_status()``,
``LiveDevice.mark_used()`` and ``LiveDevice.configure()``, which refile it in every
roster that holds it.
"""

from __future__ import annotations

import bisect
from collections.abc import Collection, ItemsView, Iterator, KeysView, ValuesView
from typing import TYPE_CHECKING

from smsgw.clock import today
from smsgw.routing import APP, eligible, spent, tier

if TYPE_CHECKING:
    from smsgw.registry import LiveDevice

Tier = tuple[int, bool]
Place = tuple[float, str]  # (last_used, device_id): unique, sorts like routing.pick()


class Roster:
    """A dict of the phones by device id that also answers "which phone next?"."""

    def __init__(self) -> None:
        self._by_id: dict[str, LiveDevice] = {}
        self._tiers: dict[Tier, list[Place]] = {}
        self._order: list[Tier] = []  # the tiers that hold phones, best first
        self._filed: dict[str, tuple[Tier, Place]] = {}
        self._parked: dict[str, LiveDevice] = {}  # spent phones, out of the tiers
        self._parked_on = ""  # the day the parked phones were last looked at

    # -- the dict part ----------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._by_id)

    def __contains__(self, device_id: object) -> bool:
        return device_id in self._by_id

    def __iter__(self) -> Iterator[str]:
        return iter(self._by_id)

    def __getitem__(self, device_id: str) -> LiveDevice:
        return self._by_id[device_id]

    def get(self, device_id: str) -> LiveDevice | None:
        return self._by_id.get(device_id)

    def keys(self) -> KeysView[str]:
        return self._by_id.keys()

    def values(self) -> ValuesView[LiveDevice]:
        return self._by_id.values()

    def items(self) -> ItemsView[str, LiveDevice]:
        return self._by_id.items()

    def put(self, live: LiveDevice) -> LiveDevice | None:
        """Hold ``live`` under its device id; returns the phone it replaced."""
        previous = self.pop(live.device_id)
        self._by_id[live.device_id] = live
        live.rosters.append(self)
        self._file(live)
        return previous

    def pop(self, device_id: str) -> LiveDevice | None:
        live = self._by_id.pop(device_id, None)
        if live is not None:
            if self._parked.pop(device_id, None) is None:
                self._unfile(device_id)
            live.rosters.remove(self)
        return live

    # -- the routing part --------------------------------------------------------------

    def refile(self, live: LiveDevice) -> None:
        """``live``'s tier or last use changed: move it to its new place."""
        if self._by_id.get(live.device_id) is not live:
            return
        if live.device_id in self._parked:
            if not spent(live):
                del self._parked[live.device_id]
                self._file(live)
            return
        if self._filed[live.device_id] == (tier(live), (live.last_used, live.device_id)):
            return  # most heartbeats: same tier, same place
        self._unfile(live.device_id)
        self._file(live)

    def pick(
        self, *, affinity: str | None = None, exclude: Collection[str] = (), app_only: bool = False
    ) -> LiveDevice | None:
        """The phone ``routing.pick(self.values(), affinity=..., exclude=..., app_only=...)``
        returns."""
        if affinity is not None and affinity not in exclude:
            live = self._by_id.get(affinity)
            if live is not None and eligible(live) and (not app_only or live.kind == APP):
                return live
        day = today()
        if day != self._parked_on:
            self._parked_on = day
            self._unpark_all()  # yesterday's quotas are spent no more
        by_id = self._by_id
        found: LiveDevice | None = None
        to_park: list[LiveDevice] = []
        for key in self._order:
            for _, device_id in self._tiers[key]:
                if device_id in exclude:
                    continue
                live = by_id[device_id]
                if app_only and live.kind != APP:
                    continue  # rare (data and encrypted SMS): a walk past the agents
                if eligible(live):
                    found = live
                    break
                if spent(live):
                    to_park.append(live)
            if found is not None:
                break
        for live in to_park:  # not during the walk: it would change the lists walked
            self._unfile(live.device_id)
            self._parked[live.device_id] = live
        return found

    def _unpark_all(self) -> None:
        parked, self._parked = self._parked, {}
        for live in parked.values():
            self._file(live)

    def _file(self, live: LiveDevice) -> None:
        key, place = tier(live), (live.last_used, live.device_id)
        places = self._tiers.get(key)
        if places is None:
            places = self._tiers[key] = []
            bisect.insort(self._order, key)
        bisect.insort(places, place)
        self._filed[live.device_id] = (key, place)

    def _unfile(self, device_id: str) -> None:
        key, place = self._filed.pop(device_id)
        places = self._tiers[key]
        del places[bisect.bisect_left(places, place)]
        if not places:
            del self._tiers[key]
            self._order.remove(key)
