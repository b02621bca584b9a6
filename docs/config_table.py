"""Writes the table of every config key into docs/configuration.md, from the pydantic config.

    python docs/config_table.py           # rewrite the table between the page's markers
    python docs/config_table.py --check   # exit 1 if the page is stale

tests/test_docs.py runs the check.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

PAGE = Path(__file__).resolve().parent / "configuration.md"
BEGIN = "<!-- config-table: begin (python docs/config_table.py writes it) -->"
END = "<!-- config-table: end -->"


def _type(prop: dict[str, Any]) -> str:
    """A field's type in a few words: enum values, list element type, optional."""
    if "enum" in prop:
        return " \\| ".join(f"`{v}`" for v in prop["enum"])
    if "anyOf" in prop:
        kinds = [_type(p) for p in prop["anyOf"]]
        named = " or ".join(k for k in kinds if k != "null")
        return named + (" or null" if "null" in kinds else "")
    kind = prop.get("type", "object")
    if kind == "array":
        return f"list of {_type(prop.get('items', {}))}"
    return {"integer": "int", "number": "float", "boolean": "bool", "string": "str"}.get(kind, kind)


def _default(value: Any) -> str:
    return "" if value is None else f"`{json.dumps(value)}`"


def _rows(schema: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """(dotted key, type, default, description) for every leaf key of the config."""
    defs = schema["$defs"]
    rows: list[tuple[str, str, str, str]] = []

    def walk(props: dict[str, Any], prefix: str, defaults: dict[str, Any]) -> None:
        for name, prop in props.items():
            key = f"{prefix}{name}"
            default = prop.get("default", defaults.get(name))
            if "$ref" in prop:
                sub = defs[prop["$ref"].rsplit("/", 1)[1]]
                walk(sub["properties"], f"{key}.", default or {})
                continue
            text = " ".join(prop.get("description", "").split()).replace("|", "\\|")
            rows.append((key, _type(prop), _default(default), text))

    walk(schema["properties"], "", {})
    return rows


def render(schema: dict[str, Any]) -> str:
    """The markdown table of every key, between the page's markers."""
    lines = [BEGIN, "", "| key | type | default | what it does |", "|---|---|---|---|"]
    lines += [f"| `{k}` | {t} | {d} | {text} |" for k, t, d, text in _rows(schema)]
    return "\n".join([*lines, "", END])


def current_schema() -> dict[str, Any]:
    sys.path.insert(0, str(PAGE.parents[1]))  # this checkout's marl_jax, not an installed one
    from marl_jax.config import schema_text

    return json.loads(schema_text())


def updated_page(page: str, schema: dict[str, Any]) -> str:
    head, rest = page.split(BEGIN, 1)
    tail = rest.split(END, 1)[1]
    return head + render(schema) + tail


def main(argv: list[str]) -> int:
    page = PAGE.read_text()
    new = updated_page(page, current_schema())
    if "--check" in argv:
        if new != page:
            print(f"{PAGE} is stale: run `python docs/config_table.py`", file=sys.stderr)
            return 1
        return 0
    PAGE.write_text(new)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
