"""Command line of the device side: ``python -m android_client simulate …``."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from .simulate import DEFAULT_STATE_DIR, SimulateOptions, simulate


def _non_negative(text: str) -> float:
    value = float(text)
    if value < 0:
        raise argparse.ArgumentTypeError("must be >= 0")
    return value


def _rate(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError("must be within [0, 1]")
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be >= 1")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m android_client")
    commands = parser.add_subparsers(dest="command", required=True)
    sim = commands.add_parser(
        "simulate",
        help="run simulated phones against a hub until Ctrl-C",
        description="Enroll (once) and connect N simulated phones; they accept, send and "
        "report messages like real ones. State is kept in --state-dir.",
    )
    sim.add_argument("--server", required=True, help="hub base URL, e.g. http://localhost:9000")
    sim.add_argument(
        "--api-key",
        default=os.environ.get("SMSGW_API_KEY"),
        help="admin API key used to enroll phones (default: $SMSGW_API_KEY); "
        "not needed when the state dir already holds their tokens",
    )
    sim.add_argument("--phones", type=_positive_int, default=1, help="number of phones")
    sim.add_argument(
        "--state-dir", type=Path, default=DEFAULT_STATE_DIR, help="default: %(default)s"
    )
    sim.add_argument("--failure-rate", type=_rate, default=0.0, help="0..1, default 0")
    sim.add_argument("--accept-delay", type=_non_negative, default=0.0, help="seconds")
    sim.add_argument("--send-delay", type=_non_negative, default=0.0, help="seconds")
    sim.add_argument("--delivery-delay", type=_non_negative, default=1.0, help="seconds, default 1")
    sim.add_argument("--no-deliver", action="store_true", help="never send delivery reports")
    sim.add_argument(
        "--inbound-every",
        type=_non_negative,
        default=None,
        metavar="S",
        help="each phone receives an SMS every S seconds",
    )
    sim.add_argument("--seed", type=int, default=None, help="seed for simulated failures")
    sim.add_argument("-v", "--verbose", action="count", default=0, help="-v info, -vv debug")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    level = [logging.WARNING, logging.INFO, logging.DEBUG][min(args.verbose, 2)]
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    opts = SimulateOptions(
        server=args.server,
        api_key=args.api_key,
        phones=args.phones,
        state_dir=args.state_dir,
        failure_rate=args.failure_rate,
        accept_delay=args.accept_delay,
        send_delay=args.send_delay,
        deliver=not args.no_deliver,
        delivery_delay=args.delivery_delay,
        inbound_every=args.inbound_every or None,
        seed=args.seed,
    )
    return asyncio.run(simulate(opts))


if __name__ == "__main__":
    sys.exit(main())
