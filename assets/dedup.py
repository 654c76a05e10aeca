"""Near-duplicate documents across every corpus (MinHash LSH), recorded as exclusions; and the
leakage check on the evaluation: too many evaluated chunks copied from their neighbours."""

import dagster as dg

from assets.groups import GOVERNANCE, owners

from assets.evaluation import evaluation
from assets.features import documents
from assets.resources import CatalogResource, FeatureStoreResource
from retro_ops.governance.dedup import DedupConfig, corpus_texts, find_near_duplicates, record_near_duplicates


class NearDuplicatesConfig(dg.Config):
    """threshold: estimated Jaccard of word 5-gram sets at and above which documents are
    near-duplicates; record: write the non-representatives as `near-duplicate` exclusions."""

    threshold: float = DedupConfig.threshold
    ngram: int = DedupConfig.ngram
    record: bool = True


@dg.asset(group_name=GOVERNANCE, owners=owners(GOVERNANCE), kinds={"python"}, code_version="1",
          deps=[dg.AssetDep(documents, partition_mapping=dg.AllPartitionMapping())])
def near_duplicates(context: dg.AssetExecutionContext, config: NearDuplicatesConfig,
                    catalog: CatalogResource, feature_store: FeatureStoreResource) -> dg.MaterializeResult:
    """Clusters of near-duplicate documents within and across corpora; one representative of
    each is kept, the others are excluded from retrieval and training (reason `near-duplicate`)."""
    cat = catalog.open()
    corpora = [c.name for c in cat.list_corpora()]
    dedup = DedupConfig(ngram=config.ngram, threshold=config.threshold)
    report = find_near_duplicates(corpus_texts(cat, feature_store.open(), corpora), dedup)
    recorded = record_near_duplicates(cat, report, actor=f"dagster:{context.run.run_id}") if config.record else []
    lines = ["| representative | near-duplicate | estimated Jaccard |", "|---|---|---|"]
    lines += [f"| {c.representative} | {d} | {s:.3f} |" for c in report.clusters for d, s in c.duplicates.items()]
    return dg.MaterializeResult(metadata={
        "corpora": ", ".join(corpora), "documents": report.documents, "clusters": len(report.clusters),
        "near_duplicates": len(report.duplicates), "exclusions_recorded": len(recorded),
        "policy": dedup.policy, "seconds": round(report.seconds, 3),
        "report": dg.MetadataValue.md("\n".join(lines[:202])),
    })


class LeakageCheckConfig(dg.Config):
    """max_leaky_share: the share of evaluated chunks with overlap alpha > 50% above which the
    evaluation is leaking; allow: report it but pass."""

    max_leaky_share: float = 0.1
    allow: bool = False


@dg.asset_check(asset=evaluation, name="evaluation_leaky_share")
def evaluation_leaky_share(context: dg.AssetCheckExecutionContext,
                           config: LeakageCheckConfig) -> dg.AssetCheckResult:
    """Fails when more evaluated chunks than allowed copy most of their tokens from the
    neighbours they read (the paper's alpha): their bpb measures copying, not modelling."""
    event = context.instance.get_latest_materialization_event(evaluation.key)
    metadata = event.asset_materialization.metadata if event and event.asset_materialization else {}
    share = metadata["leaky_share"].value if "leaky_share" in metadata else None
    ok = share is not None and (config.allow or share <= config.max_leaky_share)
    return dg.AssetCheckResult(passed=bool(ok), metadata={
        "leaky_share": share if share is not None else -1.0, "max_leaky_share": config.max_leaky_share,
        "allowed": config.allow})


DEDUP_ASSETS = [near_duplicates]
DEDUP_CHECKS = [evaluation_leaky_share]
