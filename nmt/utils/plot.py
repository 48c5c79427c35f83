"""Attention heatmaps (needs matplotlib: `pip install 'nmt[plot]'`); learning curves are in
nmt.training.curves."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from nmt.errors import NmtError


def pyplot(needed_by: str = "--plot-attention"):
    """matplotlib's pyplot, drawing to files; or one clear error naming what needed it."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only, no screen needed
        import matplotlib.pyplot as plt
    except ImportError:
        raise NmtError(
            f"{needed_by} needs matplotlib; install it with: pip install 'nmt[plot]'"
        ) from None
    return plt


def check_available(needed_by: str = "--plot-attention") -> None:
    pyplot(needed_by)


def attention_heatmap(
    weights: Sequence[Sequence[float]],
    source_pieces: Sequence[str],
    target_pieces: Sequence[str],
    path: Path,
    title: str = "",
) -> None:
    """One PNG: target subwords down, source subwords across, darker = more attention."""
    plt = pyplot()
    n_tgt, n_src = len(target_pieces), len(source_pieces)
    fig, ax = plt.subplots(figsize=(max(3.0, 0.35 * n_src + 1.5), max(3.0, 0.35 * n_tgt + 1.2)))
    ax.imshow(weights, cmap="Greys", vmin=0.0, vmax=1.0, aspect="auto")
    ax.set_xticks(range(n_src), list(source_pieces), rotation=90, fontsize=8)
    ax.set_yticks(range(n_tgt), list(target_pieces), fontsize=8)
    ax.set_xlabel("source")
    ax.set_ylabel("translation")
    if title:
        ax.set_title(title[:80], fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
