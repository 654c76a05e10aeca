"""Scorers: each maps chunk texts to (score 0..1, detail) and has an id and a version.

A scorer's key (`id@version`) names its scores in the `chunk_scores` feature set; a new version
(a new pattern list, a new model) rescores, an unchanged one never does. `make_scorer` builds
one from a policy rule's typed config.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from typing import Protocol

from retro_ops.errors import ScorerError
from retro_ops.ids import sha256_hex


class Scorer(Protocol):
    id: str
    version: str

    def score(self, texts: list[str]) -> list[tuple[float, str]]: ...


def scorer_key(scorer: Scorer) -> str:
    return f"{scorer.id}@{scorer.version}"


@dataclass(frozen=True)
class BlocklistScorer:
    """1.0 when any pattern (a regex, case-insensitive) occurs in the text; detail: which one."""

    patterns: tuple[str, ...]
    id: str = "blocklist"
    version: str = field(init=False)

    def __post_init__(self):
        if not self.patterns:
            raise ScorerError("blocklist scorer needs at least one pattern")
        for p in self.patterns:
            try:
                re.compile(p)
            except re.error as exc:
                raise ScorerError(f"blocklist pattern {p!r} is not a valid regex: {exc}") from exc
        object.__setattr__(self, "version", sha256_hex("\n".join(self.patterns))[:12])

    def score(self, texts: list[str]) -> list[tuple[float, str]]:
        compiled = [(p, re.compile(p, re.IGNORECASE)) for p in self.patterns]
        out = []
        for text in texts:
            hit = next((p for p, rx in compiled if rx.search(text)), None)
            out.append((1.0 if hit else 0.0, hit or ""))
        return out


_EMAIL = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}")
_PHONE = re.compile(r"(?<![\w.])(?<!\d[ -])(?:\+\d{1,3}[\s.-]?)?(?:\(\d{2,4}\)|\d{2,4})"
                    r"[\s.-]\d{3,4}[\s.-]\d{3,4}(?!\w|[.\s-]\d)")  # not a slice of a longer number
_CARD = re.compile(r"(?<!\d)(?:\d[ -]?){12,18}\d(?!\d)")
_IPV4 = re.compile(r"(?<![\d.])(?:\d{1,3}\.){3}\d{1,3}(?![\d.])")
_IPV6 = re.compile(r"(?<![\w:])(?:[0-9A-Fa-f]{0,4}:){2,7}[0-9A-Fa-f]{0,4}(?![\w:])")
PII_KINDS = ("email", "phone", "card", "ip")


def luhn_ok(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def _is_ip(candidate: str) -> bool:
    try:
        ipaddress.ip_address(candidate)
    except ValueError:
        return False
    return True


def pii_found(text: str) -> list[str]:
    """The PII kinds present in `text` (regexes; cards must pass Luhn, IPs must parse)."""
    found = []
    if _EMAIL.search(text):
        found.append("email")
    cards = [m.group() for m in _CARD.finditer(text) if luhn_ok(re.sub(r"\D", "", m.group()))]
    if cards:
        found.append("card")
    if any(m.group() not in cards for m in _PHONE.finditer(text)
           if 7 <= len(re.sub(r"\D", "", m.group())) <= 15 and not any(m.group() in c for c in cards)):
        found.append("phone")
    if any(_is_ip(m.group()) for m in _IPV4.finditer(text)) or \
            any(_is_ip(m.group()) for m in _IPV6.finditer(text)):
        found.append("ip")
    return found


@dataclass(frozen=True)
class PiiScorer:
    """1.0 when the text holds an email, phone number, card number (Luhn-checked) or IP address."""

    kinds: tuple[str, ...] = PII_KINDS
    id: str = "pii"
    version: str = "1"

    def __post_init__(self):
        unknown = sorted(set(self.kinds) - set(PII_KINDS))
        if unknown or not self.kinds:
            raise ScorerError(f"unknown PII kinds {unknown or '(none given)'} (known: {', '.join(PII_KINDS)})")

    def score(self, texts: list[str]) -> list[tuple[float, str]]:
        out = []
        for text in texts:
            kinds = [k for k in pii_found(text) if k in self.kinds]
            out.append((1.0 if kinds else 0.0, ",".join(kinds)))
        return out


SCORER_NAMES = ("toxicity", "blocklist", "pii")


def make_scorer(name: str, options: dict) -> Scorer:
    """A scorer from a policy rule: `name` plus its options (patterns, kinds)."""
    if name == "toxicity":
        if options:
            raise ScorerError(f"toxicity scorer takes no options (got {', '.join(sorted(options))})")
        from retro_ops.governance.toxicity import ToxicityScorer  # joblib model: only when asked
        return ToxicityScorer()
    if name == "blocklist":
        return BlocklistScorer(tuple(options.get("patterns", ())))
    if name == "pii":
        return PiiScorer(tuple(options.get("kinds", PII_KINDS)))
    raise ScorerError(f"unknown scorer {name!r} (known: {', '.join(SCORER_NAMES)})")
