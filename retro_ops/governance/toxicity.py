"""The toxicity scorer: alt-profanity-check's trained linear SVM, shipped inside the package.

Its model is two joblib files (a pickle format). Importing `profanity_check` would unpickle them
at once, unchecked, so we never import it: we load only the installed distribution's own files,
after checking each file's sha256 against the package's RECORD. A user-supplied path is never
loaded. `tests/test_static_safety.py` allows exactly this one `joblib.load`.
"""

from __future__ import annotations

import base64
import hashlib
import io
from dataclasses import dataclass
from functools import lru_cache
from importlib import metadata
from pathlib import Path

import joblib

from retro_ops.errors import ScorerError

DISTRIBUTION = "alt-profanity-check"
MODEL_FILES = ("profanity_check/data/vectorizer.joblib", "profanity_check/data/model.joblib")


def _record_sha256(data: bytes) -> str:
    """A file's digest as RECORD writes it: urlsafe base64 of sha256, no padding."""
    return base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def verified_model_files() -> list[tuple[Path, bytes]]:
    """The package's model files and their bytes, each checked against RECORD (ScorerError on any
    mismatch). The bytes checked are the bytes loaded: the file is read once, so it cannot be
    swapped between the check and the load."""
    try:
        dist = metadata.distribution(DISTRIBUTION)
    except metadata.PackageNotFoundError as exc:
        raise ScorerError(f"the toxicity scorer needs the {DISTRIBUTION} package") from exc
    records = {str(f): f for f in dist.files or []}
    paths = []
    for name in MODEL_FILES:
        entry = records.get(name)
        if entry is None or entry.hash is None or entry.hash.mode != "sha256":
            raise ScorerError(f"{DISTRIBUTION}'s RECORD has no sha256 for {name}")
        path = Path(dist.locate_file(entry))
        data = path.read_bytes()
        if _record_sha256(data) != entry.hash.value:
            raise ScorerError(f"{path}: sha256 differs from {DISTRIBUTION}'s RECORD; refusing to load it")
        paths.append((path, data))
    return paths


@lru_cache(maxsize=1)
def _model():
    (_, vectorizer_bytes), (_, model_bytes) = verified_model_files()
    # Vetted: bytes shipped inside the installed package and matched to its RECORD just above.
    return joblib.load(io.BytesIO(vectorizer_bytes)), joblib.load(io.BytesIO(model_bytes))


@dataclass(frozen=True)
class ToxicityScorer:
    """Probability that a text is profane/toxic (0..1)."""

    id: str = "toxicity"
    version: str = f"{DISTRIBUTION}-{metadata.version(DISTRIBUTION)}"

    def score(self, texts: list[str]) -> list[tuple[float, str]]:
        if not texts:
            return []
        vectorizer, model = _model()
        probs = model.predict_proba(vectorizer.transform(texts))[:, 1]
        return [(float(p), "") for p in probs]
