"""Message templates: ``{{name}}`` placeholders, found and filled. Pure functions."""

from __future__ import annotations

import re
from collections.abc import Mapping

PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")


class MissingVariables(ValueError):
    def __init__(self, names: list[str]) -> None:
        super().__init__("missing template variables: " + ", ".join(names))
        self.names = names


def variables(body: str) -> list[str]:
    """Placeholder names in order of first appearance."""
    return list(dict.fromkeys(PLACEHOLDER.findall(body)))


def render(body: str, values: Mapping[str, object]) -> str:
    missing = [name for name in variables(body) if name not in values]
    if missing:
        raise MissingVariables(missing)
    return PLACEHOLDER.sub(lambda m: str(values[m.group(1)]), body)
