"""Command line of the device side: ``smsgw-agent`` (= ``python -m android_client``).

``enroll``, ``run`` and ``status`` drive one real phone or modem (see ``agent.py`` and
docs/android.md); ``simulate`` runs a fleet of simulated phones for demos and load.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from . import agent
from .pacing import DEFAULT_DAILY_CAP, DEFAULT_MIN_INTERVAL
from .pool import run_pool
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


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError("must be >= 0")
    return value


def _positive(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError("must be > 0")
    return value


def _slots(text: str) -> tuple[int, ...]:
    try:
        slots = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError("a comma-separated list of slot numbers") from None
    if not slots or min(slots) < 0:
        raise argparse.ArgumentTypeError("a comma-separated list of slot numbers >= 0")
    return slots


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="smsgw-agent", description="The smsgw agent for a phone (Termux) or a GSM modem."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    _add_agent_commands(commands)
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


def _add_agent_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    state_help = (
        "where the token and the local queue live (default: %(default)s, or $SMSGW_AGENT_DIR)"
    )

    enroll = commands.add_parser(
        "enroll",
        help="register this phone with a hub (once)",
        description="Register this phone with the hub using a one-time code from the admin "
        "(POST /devices/enrollment-codes) or an admin API key; the device token is saved in "
        "the state dir (mode 0600). Enrolling again keeps the device id and rotates the token.",
    )
    enroll.add_argument("--server", required=True, help="hub base URL, e.g. https://hub:9000")
    how = enroll.add_mutually_exclusive_group(required=True)
    how.add_argument("--code", help="one-time enrollment code, e.g. ABCD-EFGH-JKLM")
    how.add_argument("--api-key", help="an admin API key (sk_...)")
    enroll.add_argument("--name", help="name shown in the hub (default: phone-<id>)")
    enroll.add_argument("--state-dir", type=Path, default=agent.DEFAULT_STATE_DIR, help=state_help)

    run = commands.add_parser(
        "run",
        help="connect to the hub and send/receive SMS until stopped",
        description="Run the agent until SIGTERM/SIGINT. Exit codes: 3 not enrolled, "
        "4 token refused (enroll again), 5 backend cannot start, 6 stopped by the hub, "
        "7 another agent runs on this state dir.",
    )
    run.add_argument(
        "--backend",
        choices=("termux", "modem", "simulated"),
        default="termux",
        help="default: %(default)s",
    )
    run.add_argument("--state-dir", type=Path, default=agent.DEFAULT_STATE_DIR, help=state_help)
    run.add_argument(
        "--min-interval",
        type=_non_negative,
        default=DEFAULT_MIN_INTERVAL,
        metavar="S",
        help="seconds between two SMS (default: %(default)s)",
    )
    run.add_argument(
        "--daily-cap",
        type=_non_negative_int,
        default=DEFAULT_DAILY_CAP,
        metavar="N",
        help="SMS per day before offers are refused (default: %(default)s; 0 = no cap)",
    )
    run.add_argument(
        "--backoff-max",
        type=_positive,
        default=30.0,
        metavar="S",
        help="longest wait between reconnection attempts (default: %(default)s)",
    )
    termux = run.add_argument_group("termux backend")
    termux.add_argument(
        "--poll-interval", type=_positive, default=5.0, metavar="S", help="inbox poll (default: 5)"
    )
    termux.add_argument(
        "--tool-timeout",
        type=_positive,
        default=30.0,
        metavar="S",
        help="timeout of each termux-* call (default: 30)",
    )
    termux.add_argument(
        "--sim-slots",
        type=_slots,
        default=(0,),
        metavar="0,1",
        help="SIM slots to offer the hub (default: 0)",
    )
    modem = run.add_argument_group("modem backend")
    modem.add_argument(
        "--port",
        action="append",
        help="serial device, e.g. /dev/ttyUSB0; repeat it for several modems: one agent "
        "process each, state in <state-dir>/<port name> (docs/modems.md)",
    )
    modem.add_argument("--baudrate", type=_positive_int, default=115200, help="default: 115200")
    modem.add_argument(
        "--pin",
        default=os.environ.get("SMSGW_MODEM_PIN"),
        help="SIM PIN (default: $SMSGW_MODEM_PIN)",
    )
    modem.add_argument("--smsc", help="SMS centre number, if the SIM lacks one")
    modem.add_argument(
        "--retry-unconfirmed",
        action="store_true",
        help="a modem that hangs after taking an SMS hands it back to the hub for another "
        "phone (the recipient may get it twice); default: the send is final "
        "(send_unconfirmed)",
    )
    sim = run.add_argument_group("simulated backend (testing)")
    sim.add_argument(
        "--sim-send-delay", type=_non_negative, default=0.0, metavar="S", help="seconds per SMS"
    )
    sim.add_argument("--sim-no-deliver", action="store_true", help="no delivery reports")
    run.add_argument("-v", "--verbose", action="count", default=0, help="-v debug")
    run.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")

    status = commands.add_parser(
        "status",
        help="show enrollment, queue and last connection",
        description="Read the state dir (also while the agent runs). Exit code 3 if not enrolled.",
    )
    status.add_argument("--state-dir", type=Path, default=agent.DEFAULT_STATE_DIR, help=state_help)
    status.add_argument("--json", action="store_true", help="machine-readable output")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "enroll":
            return _enroll(args)
        if args.command == "run":
            return _run(args)
        if args.command == "status":
            return _status(args)
        return _simulate(args)
    except agent.AgentError as exc:
        print(f"smsgw-agent: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130


def _log_setup(level: int) -> None:
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def _enroll(args: argparse.Namespace) -> int:
    _log_setup(logging.WARNING)
    creds = asyncio.run(
        agent.enroll_agent(
            args.state_dir, args.server, code=args.code, api_key=args.api_key, name=args.name
        )
    )
    print(
        f"enrolled as device {creds.device_id} ({creds.name}) on {creds.server}; "
        f"state in {agent.AgentDir(args.state_dir).path}"
    )
    return agent.EXIT_OK


def _run(args: argparse.Namespace) -> int:
    _log_setup(logging.WARNING if args.quiet else logging.DEBUG if args.verbose else logging.INFO)
    ports: list[str] = args.port or []
    if args.backend == "modem" and len(ports) > 1:
        return _run_pool(args, ports)
    opts = agent.RunOptions(
        state_dir=args.state_dir,
        backend=args.backend,
        min_interval=args.min_interval,
        daily_cap=args.daily_cap or None,
        backoff_max=args.backoff_max,
        poll_interval=args.poll_interval,
        tool_timeout=args.tool_timeout,
        sim_slots=args.sim_slots,
        port=ports[0] if ports else None,
        baudrate=args.baudrate,
        pin=args.pin,
        smsc=args.smsc,
        retry_unconfirmed=args.retry_unconfirmed,
        sim_send_delay=args.sim_send_delay,
        sim_deliver=not args.sim_no_deliver,
    )
    return asyncio.run(agent.run_agent(opts))


def _run_pool(args: argparse.Namespace, ports: list[str]) -> int:
    """Several modems: one agent process each, with the same options."""
    passthrough = [
        "--baudrate", str(args.baudrate),
        "--min-interval", str(args.min_interval),
        "--daily-cap", str(args.daily_cap),
        "--backoff-max", str(args.backoff_max),
    ]  # fmt: skip
    if args.smsc:
        passthrough += ["--smsc", args.smsc]
    if args.retry_unconfirmed:
        passthrough.append("--retry-unconfirmed")
    passthrough += ["-v"] * args.verbose + (["-q"] if args.quiet else [])
    if args.pin:
        os.environ["SMSGW_MODEM_PIN"] = args.pin  # for the children, never on a command line
    try:
        return asyncio.run(run_pool(ports, args.state_dir, passthrough))
    except ValueError as exc:
        raise agent.AgentError(str(exc), agent.EXIT_USAGE) from exc


def _status(args: argparse.Namespace) -> int:
    info = agent.agent_status(args.state_dir)
    print(json.dumps(info, indent=2) if args.json else agent.format_status(info))
    return agent.EXIT_OK if info["enrolled"] else agent.EXIT_NOT_ENROLLED


def _simulate(args: argparse.Namespace) -> int:
    level = [logging.WARNING, logging.INFO, logging.DEBUG][min(args.verbose, 2)]
    _log_setup(level)
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
