"""The manual in docs/: its config table is current, and every page is in mkdocs.yml's nav."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"


def config_table_module():
    spec = importlib.util.spec_from_file_location("config_table", DOCS / "config_table.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_configuration_page_lists_every_key_as_the_config_has_it():
    table = config_table_module()
    page = table.PAGE.read_text()
    assert page == table.updated_page(page, table.current_schema()), (
        "docs/configuration.md is stale: run `python docs/config_table.py`"
    )
    from marl_jax.config import Config, config_to_dict

    def leaves(tree, prefix=""):
        for key, value in tree.items():
            if isinstance(value, dict) and value:
                yield from leaves(value, f"{prefix}{key}.")
            else:
                yield f"{prefix}{key}"

    for key in leaves(config_to_dict(Config())):
        assert f"| `{key}` |" in page, f"docs/configuration.md has no row for {key}"


def test_a_stale_table_is_detected():
    table = config_table_module()
    page = table.PAGE.read_text()
    stale = page.replace("| `seed` |", "| `seed_renamed` |")
    assert stale != page and table.updated_page(stale, table.current_schema()) == page


def test_every_page_is_in_the_nav():
    nav = set(re.findall(r":\s*([\w-]+\.md)\s*$", (ROOT / "mkdocs.yml").read_text(), re.M))
    pages = {p.name for p in DOCS.glob("*.md")}
    assert pages == nav, f"pages not in mkdocs.yml's nav: {pages - nav}; missing: {nav - pages}"
