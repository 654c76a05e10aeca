"""The embedded corpora shipped in `corpora/` (see corpora/README.md for licences), and which of
them the demo (and every default that names a corpus or set) uses.

The demo trains on the King James New Testament and retrieves from the American Standard
Version's: a database of related text the model never trains on (a later revision of the same
translation, so many phrases are shared and many are reworded), which is where retrieval pays off
at demo scale (docs/results/retrieval.md). Ten chapters of
`moby_dick` are the unrelated set of the evaluation's control row. `web_nt` (a modern
translation, far less shared wording), `sotu` and the rest of `moby_dick` stay shipped for the
tests and benchmarks.
"""

from __future__ import annotations

from pathlib import Path

CORPORA_DIR = Path(__file__).resolve().parents[1] / "corpora"

#: the corpus the demo's models train on, and the retrieval set (a corpus of its own) they read
DEMO_CORPUS = "kjv_nt"
DEMO_RETRIEVAL_SET = "asv_nt"
#: a set of another domain: the evaluation's control row (reading it should gain nothing)
DEMO_UNRELATED_SET = "moby_dick"

#: name -> (location, what it is for): the demo's corpora, each also a retrieval set of its name
DEFAULT_CORPORA: dict[str, tuple[Path, str]] = {
    DEMO_CORPUS: (CORPORA_DIR / "kjv_nt", "King James Version (1769), New Testament, one file per "
                                          "chapter: the training text, and the set swapped in"),
    DEMO_RETRIEVAL_SET: (CORPORA_DIR / "asv_nt", "American Standard Version (1901), New Testament: "
                                                 "the retrieval database, a revision the model never "
                                                 "trains on"),
    DEMO_UNRELATED_SET: (CORPORA_DIR / "moby_dick" / "chapter_1?.txt",
                         "Moby-Dick, chapters 10-19: an unrelated retrieval set, the evaluation's "
                         "control (a RETRO that reads should gain nothing from it)"),
}
