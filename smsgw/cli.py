"""``smsgw``: serve the hub, apply migrations, manage client API keys, back up and restore
the database, seal stored secrets."""

from __future__ import annotations

import argparse
import asyncio
import sqlite3
import sys
from pathlib import Path

from smsgw.auth import ALL_SCOPES, issue_api_key
from smsgw.clock import iso, utcnow
from smsgw.config import Settings
from smsgw.extras import MissingExtra
from smsgw.secretbox import SETTING as SECRET_KEY_SETTING
from smsgw.secretbox import SecretKeyError
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
        elif action in ("encrypt", "decrypt"):
            return await _secrets(store, action)
    finally:
        await store.close()
    return 0


async def _secrets(store: Store, action: str) -> int:
    """Opening the store sealed what was in clear already (it does at every start); this
    says so, or writes every secret back in clear."""
    if not store.box.enabled:
        print(f"error: {SECRET_KEY_SETTING} is not set", file=sys.stderr)
        return 2
    if action == "encrypt":
        report = await store.seal_secrets()
        print(
            f"{report.kept + report.rewritten} stored secret(s) sealed under key id "
            f"{store.box.key_id}"
        )
        return 0
    report = await store.seal_secrets(clear=True)
    print(f"{report.rewritten} stored secret(s) written back in clear")
    print(
        f"remove {SECRET_KEY_SETTING} from every node before starting them again: a hub "
        "started with it seals them again"
    )
    return 0


def _backup(settings: Settings, dest: Path, pages: int) -> int:
    from smsgw.backup import BackupError, postgres_backup, sqlite_backup

    url = settings.database_url
    try:
        if url.startswith("sqlite:///"):
            done = sqlite_backup(Path(settings.sqlite_path), dest, pages=pages)
            how = f"SQLite online backup, {done.steps} step(s), integrity ok"
        elif url.startswith(("postgresql://", "postgres://")):
            done = postgres_backup(url, dest)
            how = "pg_dump --format=custom"
        else:
            raise BackupError(f"{url} keeps nothing on disk: there is nothing to back up")
    except (BackupError, OSError, sqlite3.Error) as exc:
        print(f"smsgw: backup failed: {exc}", file=sys.stderr)
        return 1
    print(f"backed up {settings.database_url_redacted} to {done.path} ({done.bytes} bytes; {how})")
    if done.version is not None:
        print(f"migrations up to {done.version}, {done.messages} message(s)")
    return 0


def _restore(settings: Settings, backup: Path) -> int:
    from smsgw.backup import BackupError, postgres_restore, sqlite_restore

    url = settings.database_url
    try:
        if url.startswith("sqlite:///"):
            done = sqlite_restore(backup, Path(settings.sqlite_path))
            how = "integrity ok"
        elif url.startswith(("postgresql://", "postgres://")):
            done = postgres_restore(url, backup)
            how = "pg_restore in one transaction"
        else:
            raise BackupError(f"{url} keeps nothing on disk: there is nothing to restore to")
    except (BackupError, OSError, sqlite3.Error) as exc:
        print(f"smsgw: restore failed: {exc}", file=sys.stderr)
        return 1
    print(
        f"restored {backup} into {settings.database_url_redacted} ({how}): "
        f"migrations up to {done.version}, {done.messages} message(s)"
    )
    if done.replaced is not None:
        print(f"the database it replaced is kept as {done.replaced}")
    print("start the hub: it applies any newer migrations")
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
    backup = sub.add_parser(
        "backup",
        help="copy the database to PATH while the hub runs (SQLite: online backup; "
        "PostgreSQL: pg_dump --format=custom)",
    )
    backup.add_argument("path", type=Path)
    backup.add_argument(
        "--pages", type=int, default=1024, help="SQLite pages copied per step (default 1024)"
    )
    restore = sub.add_parser(
        "restore",
        help="put a backup in place of the database (SQLite: the hub stopped; PostgreSQL: "
        "into an empty schema)",
    )
    restore.add_argument("path", type=Path)
    secrets = sub.add_parser(
        "secrets", help=f"stored signing secrets and {SECRET_KEY_SETTING} (docs/deploy.md)"
    )
    secrets_sub = secrets.add_subparsers(dest="action", required=True)
    secrets_sub.add_parser(
        "encrypt", help=f"seal every stored secret under {SECRET_KEY_SETTING} (done at start too)"
    )
    secrets_sub.add_parser(
        "decrypt", help="write every stored secret back in clear, to stop using the key"
    )
    args = parser.parse_args(argv)
    if args.command == "tls":
        return _tls_init(args.dir, args.host)

    settings = Settings()
    try:
        if args.command == "serve":
            from smsgw.server import serve

            serve(settings)
            return 0
        if args.command == "backup":
            return _backup(settings, args.path, max(1, args.pages))
        if args.command == "restore":
            return _restore(settings, args.path)
        action = "migrate" if args.command == "migrate" else args.action
        return asyncio.run(_with_store(settings, action, args))
    except (MissingExtra, SecretKeyError) as exc:
        print(f"smsgw: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
