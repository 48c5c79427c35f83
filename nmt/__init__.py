"""nmt: neural machine translation from YAML recipes.

The Python API: `Translator` (load a run folder or checkpoint, translate lines, n-best lists
with scores and alignments) and `score_lines` (sacreBLEU metrics), importable from here.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from nmt.config import DecodeConfig
    from nmt.decoding.records import Translation
    from nmt.decoding.translator import Translator
    from nmt.errors import NmtError
    from nmt.score import Score, score_lines

__version__ = "0.1.0"

__all__ = [
    "DecodeConfig",
    "NmtError",
    "Score",
    "Translation",
    "Translator",
    "__version__",
    "score_lines",
]

# Imported on first use, so that `import nmt` (and the CLI's start) does not load torch.
_LAZY = {
    "DecodeConfig": "nmt.config",
    "NmtError": "nmt.errors",
    "Score": "nmt.score",
    "score_lines": "nmt.score",
    "Translation": "nmt.decoding.records",
    "Translator": "nmt.decoding.translator",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'nmt' has no attribute '{name}'")
