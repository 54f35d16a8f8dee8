"""``smsgw``: serve the hub, apply migrations, manage client API keys."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from smsgw.auth import ALL_SCOPES, issue_api_key
from smsgw.clock import iso, utcnow
from smsgw.config import Settings
from smsgw.extras import MissingExtra
from smsgw.store import Store, create_store


async def _with_store(settings: Settings, action: str, args: argparse.Namespace) -> int:
    store: Store = create_store(settings)
    await store.open()  # opening applies pending migrations
    try:
        if action == "migrate":
            print(f"database at {settings.database_url_redacted} is up to date")
        elif action == "create":
            scopes = frozenset(s.strip() for s in args.scopes.split(",") if s.strip())
            try:
                secret, key = await issue_api_key(store, args.name, scopes, utcnow())
            except ValueError as exc:
                print(f"error: {exc}", file=sys.stderr)
                return 2
            print(f"created key {key.id} ({key.name}) scopes={','.join(sorted(key.scopes))}")
            print(f"secret (shown once): {secret}")
        elif action == "list":
            for k in await store.list_api_keys():
                state = f"revoked {iso(k.revoked_at)}" if k.revoked_at else "active"
                print(f"{k.id}  {k.prefix}  {','.join(sorted(k.scopes)):<16} {state:<10} {k.name}")
        elif action == "revoke":
            if not await store.revoke_api_key(args.key_id, utcnow()):
                print(f"error: no active key {args.key_id}", file=sys.stderr)
                return 1
            print(f"revoked {args.key_id}")
    finally:
        await store.close()
    return 0


def _tls_init(directory: str, hosts: list[str]) -> int:
    from smsgw.tls import init

    try:
        issued = init(Path(directory), hosts)
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    made = "created" if issued.ca_created else "kept (phones that trust it keep trusting)"
    print(f"CA certificate {issued.ca_cert}: {made}")
    print(f"server certificate for {', '.join(hosts)}: {issued.server_cert}")
    print("serve HTTPS with:")
    print(f"  SMSGW_TLS_CERT={issued.server_cert.resolve()}")
    print(f"  SMSGW_TLS_KEY={issued.server_key.resolve()}")
    print("then install the CA on each phone: https://<hub>/tls/ca.crt (docs/smsgate-app.md)")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="smsgw", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("serve", help="run the hub (settings from SMSGW_* variables)")
    sub.add_parser("migrate", help="apply pending database migrations")
    keys = sub.add_parser("keys", help="manage client API keys")
    key_sub = keys.add_subparsers(dest="action", required=True)
    create = key_sub.add_parser("create", help="create a key (the secret is printed once)")
    create.add_argument("--name", required=True)
    create.add_argument(
        "--scopes", default="send,read", help=f"comma-separated, of {sorted(ALL_SCOPES)}"
    )
    key_sub.add_parser("list", help="list keys")
    revoke = key_sub.add_parser("revoke", help="revoke a key")
    revoke.add_argument("key_id")
    tls = sub.add_parser("tls", help="HTTPS with a local CA (docs/smsgate-app.md)")
    tls_sub = tls.add_subparsers(dest="action", required=True)
    init = tls_sub.add_parser(
        "init", help="create a local CA (once) and a server certificate for --host(s)"
    )
    init.add_argument(
        "--host",
        action="append",
        required=True,
        help="an IP address or name phones use to reach the hub (repeat for several)",
    )
    init.add_argument("--dir", default="tls", help="where the files go (default: ./tls)")
    args = parser.parse_args(argv)
    if args.command == "tls":
        return _tls_init(args.dir, args.host)

    settings = Settings()
    try:
        if args.command == "serve":
            from smsgw.server import serve

            serve(settings)
            return 0
        action = "migrate" if args.command == "migrate" else args.action
        return asyncio.run(_with_store(settings, action, args))
    except MissingExtra as exc:
        print(f"smsgw: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
