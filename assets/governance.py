"""Governance assets: chunk scores per corpus (toxicity, PII, blocklists), the exclusion list's
neighbour in the graph (`assets/sources.py`). Scoring is cached per (content hash, scorer
version), so re-materializing after a corpus change scores only the new chunk texts."""

import dagster as dg

from assets.automation import ON_UPSTREAM_CHANGE
from assets.features import chunks
from assets.figures import markdown_table
from assets.groups import GOVERNANCE, owners
from assets.partitions import corpus_partitions
from assets.resources import CatalogResource, FeatureStoreResource
from retro_ops.features.locks import WRITE_POOL
from retro_ops.features.schemas import SCORES


class ChunkScoresConfig(dg.Config):
    """scorers: which scorers to run (toxicity, pii; a blocklist needs a policy's patterns);
    flag_at: the score counted as flagged in the metadata (policies set their own thresholds)."""

    scorers: list[str] = ["toxicity", "pii"]
    flag_at: float = 0.5


@dg.asset(partitions_def=corpus_partitions, group_name=GOVERNANCE, owners=owners(GOVERNANCE),
          kinds={"scikitlearn", "lancedb"}, deps=[chunks], pool=WRITE_POOL, code_version="1",
          automation_condition=ON_UPSTREAM_CHANGE)
def chunk_scores(context: dg.AssetExecutionContext, config: ChunkScoresConfig,
                 catalog: CatalogResource, feature_store: FeatureStoreResource) -> dg.MaterializeResult:
    """Each scorer's score of every distinct chunk text of the corpus, in LanceDB
    (`chunk_scores`); `retro-ops exclude apply` turns scores over a policy's thresholds into
    audited exclusions."""
    from retro_ops.governance.corpus_scores import score_corpus  # run-time: scikit-learn and LanceDB
    from retro_ops.governance.scorers import make_scorer

    store = feature_store.open()
    summaries = score_corpus(catalog.open(), store, context.partition_key,
                             [make_scorer(name, {}) for name in config.scorers], flag_at=config.flag_at)
    rows = [[s.scorer, s.texts, s.newly_scored, s.flagged, f"{s.max_score:.3f}"] for s in summaries]
    return dg.MaterializeResult(metadata={
        "dagster/row_count": sum(s.texts for s in summaries),
        "scores": dg.MetadataValue.md(markdown_table(
            ["scorer", "texts", "scored now", f"flagged (>= {config.flag_at})", "max"], rows)),
        "flagged": sum(s.flagged for s in summaries),
        "newly_scored": sum(s.newly_scored for s in summaries),
        "lancedb_version": store.version(SCORES),
    })
