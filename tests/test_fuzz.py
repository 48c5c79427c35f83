"""Random input never crashes `nmt`: it ends either in a result or in a clear NmtError."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nmt import config
from nmt.decoding.translator import Translator
from nmt.errors import NmtError

FUZZ = settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@pytest.fixture(scope="module")
def translator(trained_run):
    return Translator.load(trained_run / "best.pt", method="greedy", max_len_b=5, max_len_a=0.5)


@FUZZ
@given(st.lists(st.text(max_size=200), min_size=1, max_size=6))
def test_translate_random_unicode_keeps_one_line_per_line(translator, lines):
    lines = [line.replace("\n", " ").replace("\r", " ") for line in lines]
    out = translator.translate(lines)
    assert len(out) == len(lines)
    assert all("\n" not in o for o in out)
    for line, o in zip(lines, out):
        if not line.strip():
            assert o == ""


@FUZZ
@given(st.binary(max_size=300))
def test_recipe_loader_random_bytes(tmp_path_factory, raw):
    path = tmp_path_factory.mktemp("fuzz") / "r.yaml"
    path.write_bytes(raw)
    try:
        config.load(path)
    except NmtError as e:
        assert "\n" not in str(e)


_values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-5, 10**6),
    st.floats(allow_nan=True),
    st.text(max_size=12),
)
_keys = st.sampled_from(["data", "model", "train", "d_model", "heads", "lr", "attention", "x"])
_trees = st.recursive(
    _values, lambda inner: st.dictionaries(_keys, inner, max_size=4), max_leaves=12
)


@FUZZ
@given(_trees)
def test_recipe_loader_random_structures(tmp_path_factory, tree):
    import yaml

    path = tmp_path_factory.mktemp("fuzz") / "r.yaml"
    path.write_text(yaml.safe_dump(tree))
    try:
        config.load(path)
    except NmtError as e:
        assert "\n" not in str(e)


@FUZZ
@given(st.binary(max_size=400))
def test_translate_cli_random_bytes_on_stdin(trained_run, raw):
    from typer.testing import CliRunner

    from nmt.cli import app

    result = CliRunner().invoke(
        app, ["translate", str(trained_run), "--greedy", "--max-len-b", "3"], input=raw
    )
    if result.exit_code == 0:
        # One output line per input line (a final line without newline counts too).
        n_lines = len(raw.split(b"\n")) - (1 if raw.endswith(b"\n") or not raw else 0)
        assert len(result.stdout.split("\n")) - 1 == n_lines
    else:
        assert result.exit_code == 2, result.output
        assert result.stderr.startswith("error: ") and "Traceback" not in result.output
