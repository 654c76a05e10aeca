"""How a chunk is shown to a person: its text, or its id and the exclusion that covers it.

Excluded text is never shown by default. Every command and endpoint that prints chunk text
(`generations show`, `retrieve`, `exclude apply`'s sample...) asks a `ChunkView` per chunk; an
excluded one comes back without its text (and its sources), with the exclusion that covers it.
An auditor's `--include-excluded` makes a view with `reveal_to=<who>`: the text comes back too,
and `audit()` writes every excluded text so revealed to the exclusion log (`exclusion_reads`,
one row per covering exclusion). Callers call `audit()` before they show anything: a read that
cannot be recorded is not shown. The view reads the exclusions once (fail closed: an
unreadable list raises `ExclusionListError`, and nothing is shown).
"""

from __future__ import annotations

from dataclasses import dataclass

from retro_ops.errors import ExclusionError


@dataclass(frozen=True)
class Shown:
    """One chunk as shown: `text` None when hidden; `excluded` the covering exclusion (id,
    scope, policy, reason) or None."""

    text: str | None
    excluded: dict | None

    @property
    def hidden(self) -> bool:
        return self.excluded is not None and self.text is None


class ChunkView:
    """Decides, for one command run, how each chunk is shown."""

    def __init__(self, catalog, *, purpose: str, reveal_to: str | None = None):
        if reveal_to is not None and not reveal_to.strip():
            raise ExclusionError(f"showing excluded text ({purpose}) needs an actor")
        self.catalog, self.purpose, self.reveal_to = catalog, purpose, reveal_to
        self.active = catalog.active_exclusions()
        self._details: dict[int, dict] | None = None
        self._reads: set[tuple[int, int]] = set()

    def exclusion(self, exclusion_id: int) -> dict:
        """What is shown of an exclusion in place of the text it covers."""
        if self._details is None:
            self._details = {r.id: {"exclusion_id": r.id, "scope": r.scope, "policy": r.policy,
                                    "reason": r.reason}
                             for r in self.catalog.list_exclusions(include_revoked=False)}
        return self._details.get(exclusion_id, {"exclusion_id": exclusion_id})

    def chunk(self, chunk_id: int, content_hash: str | None, doc_id: str, text: str | None) -> Shown:
        """`text` when no exclusion covers the chunk (or `reveal_to` asked for it, audited);
        else no text and the exclusion. `content_hash` None: unknown (a purged chunk)."""
        covering = self.active.covering(int(chunk_id), content_hash, doc_id)
        if not covering:
            return Shown(text, None)
        if self.reveal_to is None or text is None:
            return Shown(None, self.exclusion(covering[0]))
        self._reads.update((e, int(chunk_id)) for e in covering)
        return Shown(text, self.exclusion(covering[0]))

    def audit(self) -> int:
        """Record the excluded texts this view revealed (committed); call before showing them."""
        if not self._reads:
            return 0
        written = self.catalog.record_exclusion_reads(sorted(self._reads), actor=self.reveal_to,
                                                      purpose=self.purpose)
        self._reads.clear()
        return written
