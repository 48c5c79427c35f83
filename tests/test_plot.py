"""--plot-attention: one heatmap per input line, and a clear error without matplotlib."""

from __future__ import annotations

import sys

from test_cli import assert_user_error, nmt


def test_plot_attention_writes_one_png_per_line(trained_run, tmp_path):
    folder = tmp_path / "plots"
    text = "The dog laughed.\n\nA cat saw the boy.\n"
    result = nmt("translate", trained_run, "--greedy", "--plot-attention", folder, input=text)
    assert result.exit_code == 0, result.output
    assert len(result.stdout.splitlines()) == 3
    assert sorted(p.name for p in folder.iterdir()) == ["000001.png", "000003.png"]
    for png in folder.iterdir():
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert png.stat().st_size > 2000


def test_plot_attention_without_matplotlib(trained_run, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import now fails
    result = nmt("translate", trained_run, "--plot-attention", tmp_path / "p", input="A cat.\n")
    assert_user_error(result, "needs matplotlib", "pip install 'nmt[plot]'")
