"""Content-derived identities: the same text always gets the same id, on every machine.

`doc_id` is the hash of the normalised document, so exact duplicates collapse; a chunk id is
derived from (doc_id, position) and fits FAISS's int64 id space; the chunk's content hash keys
its embeddings, so identical chunk text is embedded once per embedding space.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections.abc import Iterable

from retro_ops.errors import InvalidNameError

DOC_ID_HEX_CHARS = 32  # 128 bits: collision-free for any corpus this will ever hold


def normalise_text(text: str) -> str:
    """Unicode NFC with Unix newlines: two files that differ only in these are one document."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    return unicodedata.normalize("NFC", text)


def sha256_hex(data: str | bytes) -> str:
    return hashlib.sha256(data.encode("utf-8") if isinstance(data, str) else data).hexdigest()


def document_id(normalised_text: str) -> str:
    return sha256_hex(normalised_text)[:DOC_ID_HEX_CHARS]


def chunk_id(doc_id: str, position: int) -> int:
    """A positive int63 (FAISS ids are int64): the first 8 bytes of sha256(doc_id:position)."""
    digest = hashlib.sha256(f"{doc_id}:{position}".encode()).digest()
    return int.from_bytes(digest[:8], "big") & 0x7FFF_FFFF_FFFF_FFFF


def content_hash(chunk_text: str) -> str:
    return sha256_hex(chunk_text)[:DOC_ID_HEX_CHARS]


def set_digest(ids: Iterable[str]) -> str:
    """Order-independent digest of a set of ids: a corpus version is the digest of its doc_ids."""
    return sha256_hex("\n".join(sorted(set(ids))))


NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


def validate_name(name: str, kind: str) -> str:
    """`name` if it is safe as a folder name and a Dagster partition key, else InvalidNameError.

    Corpus and retrieval-set names become paths (`indices/<set>`): `../x` or `/tmp/x` would
    write outside the home, so only letters, digits, `_`, `.` and `-` are allowed (no leading
    dot or dash), at most 64 characters.
    """
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
        raise InvalidNameError(
            f"invalid {kind} name {name!r}: use 1-64 letters, digits, '_', '.' or '-', "
            "starting with a letter or digit")
    return name
