"""Packaging: the version, PEP 561 type markers and the licence."""

from __future__ import annotations

import tomllib
from pathlib import Path

import marl_jax

ROOT = Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_version_is_the_projects():
    assert marl_jax.__version__ == PROJECT["project"]["version"]


def test_both_packages_ship_py_typed():
    package_data = PROJECT["tool"]["setuptools"]["package-data"]
    for package in ("marl_jax", "bridge"):
        assert (ROOT / package / "py.typed").is_file()
        assert "py.typed" in package_data[package]


def test_the_licence_is_apache_2():
    assert PROJECT["project"]["license"] == "Apache-2.0"
    assert PROJECT["project"]["license-files"] == ["LICENSE"]
    text = (ROOT / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text
