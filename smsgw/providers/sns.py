"""Amazon SNS SMS (docs/routes.md): ``Publish`` to a phone number with boto3, in a thread
(boto3 blocks; its clients are thread-safe).

SNS has no per-message delivery callback (delivery status goes to CloudWatch Logs), so
its acceptance is the last word: the message is SENT with the ``MessageId`` SNS gave and
the route's configured price. ``api_base_url`` is boto3's ``endpoint_url`` (a VPC
endpoint, another region's, or moto in the tests). Throttling and 5xx answers, and an
endpoint that could not be reached, are transient; every other refusal FAILS with the
SNS error code (``InvalidParameter``, ``OptedOut``, ...).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from smsgw.providers import Accepted, Refused, Report, segment_price
from smsgw.store.records import Message, Route

RETRYABLE_CODES = frozenset({"Throttling", "ThrottlingException", "ThrottledException"})
# smsgw's sms_type -> SNS's AWS.SNS.SMS.SMSType (SNS knows only these two).
PROMOTIONAL = frozenset({"promotional", "marketing"})


def _publish(message: Message, route: Route) -> Accepted | Refused:
    import boto3
    from botocore.config import Config
    from botocore.exceptions import ClientError, EndpointConnectionError

    creds = route.credentials
    client = boto3.client(
        "sns",
        region_name=creds["region"],
        endpoint_url=route.api_base_url or None,
        aws_access_key_id=creds["access_key_id"],
        aws_secret_access_key=creds["secret_access_key"],
        # No retries of boto3's own: a retried Publish could send twice.
        config=Config(retries={"total_max_attempts": 1}, connect_timeout=5, read_timeout=15),
    )
    kind = "Promotional" if message.sms_type in PROMOTIONAL else "Transactional"
    attributes: dict[str, Any] = {
        "AWS.SNS.SMS.SMSType": {"DataType": "String", "StringValue": kind}
    }
    if route.sender:
        attributes["AWS.SNS.SMS.SenderID"] = {"DataType": "String", "StringValue": route.sender}
    cap = route.policy.get("max_cost_per_message")
    if cap is not None:
        attributes["AWS.SNS.SMS.MaxPrice"] = {"DataType": "Number", "StringValue": f"{cap}"}
    try:
        answer = client.publish(
            PhoneNumber=message.recipient, Message=message.body, MessageAttributes=attributes
        )
    except EndpointConnectionError as exc:
        return Refused("provider_unreachable", str(exc)[:500], retryable=True)
    except ClientError as exc:
        error = exc.response.get("Error", {})
        code = str(error.get("Code") or "sns_error")
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
        retryable = code in RETRYABLE_CODES or status == 429 or status >= 500
        return Refused(code, str(error.get("Message") or exc)[:500], retryable=retryable)
    except Exception as exc:  # a read timeout, a reset: maybe sent
        return Refused("route_unknown", f"{type(exc).__name__}: {exc}"[:500])
    return Accepted(
        str(answer["MessageId"]),
        sent=True,
        cost=segment_price(message, route),
        currency=route.currency,
    )


class SnsProvider:
    async def send(self, message: Message, route: Route, callback_url: str) -> Accepted | Refused:
        return await asyncio.to_thread(_publish, message, route)

    def verify_callback(
        self, route: Route, url: str, params: Mapping[str, list[str]], signature: str | None
    ) -> bool:
        return False  # SNS does not call back per message: anything claiming to is forged

    def parse_callback(self, params: Mapping[str, list[str]]) -> Report | None:
        return None
