"""Which route, if any, takes a message no phone took (docs/routes.md). Pure: no I/O.

A route's ``policy`` (a JSON object, validated by the API):

- ``after_seconds`` (default 60): a message is the route's to take once this many seconds
  have passed since its creation and no phone accepted it (phones first: they are cheaper
  and private);
- ``sms_types`` (default null, every type): only messages of these types
  (``otp``, ``transactional``, ``promotional``, ``alert``, ``marketing``); a message
  without a type is ``transactional``;
- ``max_cost_per_message``: never a message whose price (segments x the route's price per
  segment) is above; a route with no configured price is taken to cost 0;
- ``max_cost_per_day``: never above this total over the UTC day (what the route's
  messages of the day cost, plus this one).

A message forced to a route (``"route": "<name>"`` on dispatch) is that route's alone,
at once, whatever its policy says of waits and types (the caller asked for it), but
still never above its cost caps. Among the routes that admit a message, the one with the
highest ``priority`` wins (then the name, so every node picks the same one).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

from smsgw.store.records import Message, Route

SMS_TYPES = ("otp", "transactional", "promotional", "alert", "marketing")
DEFAULT_TYPE = "transactional"
DEFAULT_AFTER = 60.0


@dataclass(frozen=True, slots=True)
class Choice:
    route: Route
    cost: float  # what the message will cost on it (configured price x segments)


def after_seconds(route: Route) -> float:
    value = route.policy.get("after_seconds")
    return DEFAULT_AFTER if value is None else float(value)


def price(message: Message, route: Route) -> float:
    return (route.price_per_segment or 0.0) * max(message.parts, 1)


def admits(route: Route, message: Message, now: datetime, spent_today: float = 0.0) -> bool:
    """Whether ``route``'s policy lets it take ``message`` now (having spent
    ``spent_today`` over the UTC day)."""
    if not route.enabled:
        return False
    if message.route_id is not None and message.route_id != route.id:
        return False  # bound to another route
    policy = route.policy
    cost = price(message, route)
    cap = policy.get("max_cost_per_message")
    if cap is not None and cost > float(cap):
        return False
    daily = policy.get("max_cost_per_day")
    if daily is not None and spent_today + cost > float(daily):
        return False
    if message.route_id == route.id:
        return True  # forced: no wait, every type
    types = policy.get("sms_types")
    if types is not None and (message.sms_type or DEFAULT_TYPE) not in types:
        return False
    return now - message.created_at >= timedelta(seconds=after_seconds(route))


def choose(
    routes: Iterable[Route],
    message: Message,
    now: datetime,
    spent_today: Mapping[str, float] | None = None,
) -> Choice | None:
    """The route that takes ``message`` now, or None (it waits for a phone, or longer)."""
    spent = spent_today or {}
    ordered = sorted(routes, key=lambda r: (-r.priority, r.name))
    for r in ordered:
        if admits(r, message, now, spent.get(r.id, 0.0)):
            return Choice(r, price(message, r))
    return None


def shortest_wait(routes: Iterable[Route]) -> float | None:
    """The least ``after_seconds`` of the enabled routes (None: no route takes anything
    but forced messages): messages younger than this are no route's yet."""
    waits = [after_seconds(r) for r in routes if r.enabled]
    return min(waits) if waits else None
