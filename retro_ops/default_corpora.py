"""The embedded default corpora shipped in `corpora/` (see corpora/README.md for licences)."""

from __future__ import annotations

from pathlib import Path

CORPORA_DIR = Path(__file__).resolve().parents[1] / "corpora"

#: name -> (location, what it is for)
DEFAULT_CORPORA: dict[str, tuple[Path, str]] = {
    "sotu": (CORPORA_DIR / "sotu", "US State of the Union addresses 1990-2021: train and retrieve"),
    "moby_dick": (CORPORA_DIR / "moby_dick", "Moby-Dick (1851), by chapter: the swap-in domain"),
}
