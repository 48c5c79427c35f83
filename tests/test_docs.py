"""The documentation: reference pages that match the code, and a site that builds."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_reference_pages_are_what_the_generator_writes():
    result = subprocess.run(
        [sys.executable, "docs/generate.py", "--check"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr


def test_the_generator_notices_a_stale_page(tmp_path):
    """A copy of docs/ whose recipe page lacks a key: --check must fail and name the page."""
    docs = tmp_path / "docs"
    shutil.copytree(ROOT / "docs", docs, ignore=shutil.ignore_patterns("logs", "img"))
    page = docs / "reference" / "recipe.md"
    page.write_text(page.read_text(encoding="utf-8").replace("`train.lr`", "`train.rate`"))
    result = subprocess.run(
        [sys.executable, str(docs / "generate.py"), "--check"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1
    assert "reference/recipe.md" in result.stderr and "cli.md" not in result.stderr


def test_every_recipe_key_and_command_is_in_the_reference():
    import dataclasses

    from nmt import cli, config

    recipe_page = (ROOT / "docs" / "reference" / "recipe.md").read_text(encoding="utf-8")
    for section in dataclasses.fields(config.Recipe):
        value = getattr(config.Recipe(), section.name)
        keys = (
            [f"{section.name}.{f.name}" for f in dataclasses.fields(value)]
            if dataclasses.is_dataclass(value)
            else [section.name]
        )
        for key in keys:
            row = next(
                (line for line in recipe_page.splitlines() if line.startswith(f"| `{key}` |")), ""
            )
            assert row, f"{key} is missing from the recipe reference"
            assert not row.rstrip().endswith("|  |"), f"{key} has no meaning in config.py"
    cli_page = (ROOT / "docs" / "reference" / "cli.md").read_text(encoding="utf-8")
    for command in cli.app.registered_commands:
        name = command.name or command.callback.__name__
        assert f"## nmt {name}" in cli_page


def test_the_site_builds_strictly(tmp_path):
    pytest.importorskip("mkdocs", reason="pip install -e '.[docs]' builds the site")
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "reference" / "recipe" / "index.html").is_file()


def test_readme_is_a_front_page():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(readme.splitlines()) <= 250
    for page in ("getting-started.md", "training.md", "results.md", "reference/cli.md"):
        assert f"docs/{page}" in readme, page
