"""Policies: which scorer at which threshold excludes what, applied to a retrieval set.

A policy is a TOML file:

    name = "safety-v1"
    [[rule]]
    scorer = "toxicity"          # toxicity | blocklist | pii
    threshold = 0.8              # exclude when score >= threshold
    scope = "content_hash"       # chunk | content_hash | document
    reason = "toxic language"
    # options of the scorer: patterns = [...] (blocklist), kinds = [...] (pii)

Applying scores the distinct texts of the set's latest version (only those this scorer version
has not scored yet), then records one audited exclusion per match. A dry run scores in memory
and writes nothing: no score rows, no exclusions. The report's sample of matches shows a text
only while no exclusion covers it (after a real run: the exclusion instead).
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from retro_ops.catalog import Catalog
from retro_ops.catalog.exclusions import SCOPES, NewExclusion
from retro_ops.catalog.visibility import ChunkView
from retro_ops.errors import PolicyError, ScorerError
from retro_ops.features.store import FeatureStore
from retro_ops.governance.corpus_scores import ensure_scores
from retro_ops.governance.scorers import Scorer, make_scorer, scorer_key

_RULE_KEYS = {"scorer", "threshold", "scope", "reason"}


@dataclass(frozen=True)
class Rule:
    scorer: Scorer
    threshold: float
    scope: str
    reason: str


@dataclass(frozen=True)
class Policy:
    name: str
    rules: tuple[Rule, ...]


@dataclass
class PolicyReport:
    policy: str
    retrieval_set: str
    set_version_id: int
    dry_run: bool
    texts: int = 0
    newly_scored: dict[str, int] = field(default_factory=dict)  # scorer key -> texts scored now
    matches: dict[str, int] = field(default_factory=dict)  # scorer key -> chunks over threshold
    new_exclusions: int = 0
    already_excluded: int = 0
    sample: list[dict] = field(default_factory=list)
    exclusion_ids: list[int] = field(default_factory=list)


def load_policy(path: Path) -> Policy:
    try:
        data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise PolicyError(f"{path}: cannot read policy ({exc})") from exc
    name, raw_rules = data.get("name"), data.get("rule", [])
    if not isinstance(name, str) or not name.strip():
        raise PolicyError(f"{path}: policy needs a `name`")
    if not raw_rules:
        raise PolicyError(f"{path}: policy {name!r} has no [[rule]]")
    rules = []
    for n, raw in enumerate(raw_rules, 1):
        where = f"{path}: rule {n}"
        threshold, scope = raw.get("threshold"), raw.get("scope", "content_hash")
        if not isinstance(threshold, int | float) or not 0 <= threshold <= 1:
            raise PolicyError(f"{where}: threshold must be a number in [0, 1], got {threshold!r}")
        if scope not in SCOPES:
            raise PolicyError(f"{where}: scope {scope!r} is not one of {', '.join(SCOPES)}")
        try:
            scorer = make_scorer(str(raw.get("scorer")), {k: v for k, v in raw.items() if k not in _RULE_KEYS})
        except ScorerError as exc:
            raise PolicyError(f"{where}: {exc}") from exc
        rules.append(Rule(scorer, float(threshold), scope, str(raw.get("reason") or f"{raw['scorer']} >= {threshold}")))
    return Policy(name, tuple(rules))


def _targets(rule: Rule, rows: list[dict]) -> list[str]:
    if rule.scope == "chunk":
        return sorted({str(r["chunk_id"]) for r in rows})
    return sorted({r["content_hash"] if rule.scope == "content_hash" else r["doc_id"] for r in rows})


def apply_policy(catalog: Catalog, store: FeatureStore, policy: Policy, retrieval_set: str, *,
                 actor: str, dry_run: bool = False, sample_size: int = 5) -> PolicyReport:
    version = catalog.latest_retrieval_set_version(retrieval_set)
    members = store.members(version.digest, ["chunk_id", "doc_id", "content_hash", "text"]).to_pylist()
    by_hash: dict[str, list[dict]] = {}
    for row in members:
        by_hash.setdefault(row["content_hash"], []).append(row)
    hashes = sorted(by_hash)
    report = PolicyReport(policy.name, retrieval_set, version.id, dry_run, texts=len(hashes))
    active = catalog.active_exclusions()
    active_targets = {"chunk": {str(c) for c in active.chunk_ids},
                      "content_hash": set(active.content_hashes), "document": set(active.doc_ids)}
    planned: dict[tuple[str, str], NewExclusion] = {}
    for rule in policy.rules:
        key = scorer_key(rule.scorer)
        known, scored_now = ensure_scores(store, rule.scorer, {h: by_hash[h][0]["text"] for h in hashes},
                                          write=not dry_run)
        report.newly_scored[key] = report.newly_scored.get(key, 0) + scored_now
        hits = [h for h in hashes if known[h][0] >= rule.threshold]
        report.matches[key] = sum(len(by_hash[h]) for h in hits)
        for h in hits:
            score, detail = known[h]
            for target in _targets(rule, by_hash[h]):
                if target in active_targets[rule.scope]:
                    report.already_excluded += 1
                elif (rule.scope, target) not in planned:
                    reason = f"{rule.reason} ({detail})" if detail else rule.reason
                    planned[(rule.scope, target)] = NewExclusion(rule.scope, target, reason, policy.name, key, score)
                    if len(report.sample) < sample_size:
                        first = by_hash[h][0]
                        report.sample.append({"scope": rule.scope, "target": target, "scorer": key,
                                              "score": round(score, 4), "chunk_id": first["chunk_id"],
                                              "doc_id": first["doc_id"], "content_hash": h,
                                              "text": first["text"][:80]})
    report.new_exclusions = len(planned)
    if planned and not dry_run:
        report.exclusion_ids = catalog.record_exclusions(list(planned.values()), actor=actor)
    # read after recording: what this run excluded (or any exclusion already over the chunk)
    # shows as the exclusion, not the text
    view = ChunkView(catalog, purpose=f"exclude apply {policy.name}")
    for row in report.sample:
        shown = view.chunk(row["chunk_id"], row["content_hash"], row["doc_id"], row["text"])
        row["text"], row["excluded"] = shown.text, shown.excluded
    return report
