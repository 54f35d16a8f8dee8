"""Finding the plain-SQL migrations in ``migrations/``, in order.

Files are named ``NNNN_description.sql``; a file ``NNNN_description.<engine>.sql`` is used
instead of the plain one for that engine only. Applied versions are recorded in the
``schema_migrations`` table by each store.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True, slots=True)
class Migration:
    version: str
    path: Path

    def sql(self) -> str:
        return self.path.read_text(encoding="utf-8")


def migrations_dir() -> Path:
    override = os.environ.get("SMSGW_MIGRATIONS_DIR")
    if override:
        return Path(override)
    return Path(__file__).resolve().parents[2] / "migrations"


def load_migrations(engine: str, directory: Path | None = None) -> list[Migration]:
    directory = directory or migrations_dir()
    chosen: dict[str, Path] = {}
    for path in sorted(directory.glob("*.sql")):
        parts = path.name.split(".")
        version = parts[0]
        if len(parts) == 3 and parts[1] != engine:
            continue  # another engine's variant
        if len(parts) == 2 and version in chosen:
            continue  # this engine's variant already won
        chosen[version] = path
    if not chosen:
        raise RuntimeError(f"no migrations found in {directory}")
    return [Migration(v, chosen[v]) for v in sorted(chosen)]
