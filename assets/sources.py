"""What the pipeline reads but does not make: each corpus's raw files, and the exclusion list.

Both are observable source assets whose data version is a digest of what they hold (the files'
bytes; the active exclusions), so Dagster marks exactly their dependents stale when they change.
`source_observer` (a sensor, on with automation) records an observation only when a digest
changed; the declarative automation of the downstream assets (`assets/automation.py`) then
re-materializes what depends on it. The UI's "Observe sources" button runs the same digests.
"""

import json
import warnings

import dagster as dg

from assets.automation import automation_interval, automation_status
from assets.groups import CORPORA, GOVERNANCE, owners
from assets.partitions import corpus_partitions
from assets.resources import CatalogResource
from retro_ops.catalog import Catalog
from retro_ops.corpus.fingerprint import files_fingerprint
from retro_ops.errors import CorpusError
from retro_ops.ids import sha256_hex

CORPUS_FILES = dg.AssetKey("corpus_files")
EXCLUSIONS = dg.AssetKey("exclusions")


def corpus_versions(catalog: Catalog) -> dict[str, str]:
    """corpus name -> digest of its files now ("missing" where its location holds none)."""
    versions = {}
    for corpus in catalog.list_corpora():
        try:
            versions[corpus.name] = files_fingerprint(corpus.source_uri).digest[:16]
        except CorpusError:
            versions[corpus.name] = "missing"
    return versions


def exclusions_version(catalog: Catalog) -> tuple[str, int]:
    """(digest of the active exclusions, how many): a new exclusion or a revoke changes it."""
    active = catalog.active_exclusions()
    lines = ([f"chunk:{c}" for c in active.chunk_ids] + [f"content_hash:{h}" for h in active.content_hashes]
             + [f"document:{d}" for d in active.doc_ids])
    return sha256_hex("\n".join(sorted(lines)))[:16], len(active)


# Observable sources are "beta" in dagster 1.13 (the API is the documented one); say so once here
# rather than warn on every CLI command that loads the code location.
with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message=r".*`multi_observable_source_asset` is currently in beta",
                            category=dg.BetaWarning)

    @dg.multi_observable_source_asset(
        specs=[dg.AssetSpec(
            CORPUS_FILES, group_name=CORPORA, owners=owners(CORPORA), kinds={"file"},
            description="The raw files of each corpus (a folder, glob or file); data version = digest "
                        "of their bytes, so an edited, added or removed file marks the corpus stale.")],
        partitions_def=corpus_partitions, required_resource_keys={"catalog"})
    def corpus_files(context) -> dg.ObserveResult:
        corpus = context.resources.catalog.open().get_corpus(context.partition_key)
        found = files_fingerprint(corpus.source_uri)
        return dg.ObserveResult(data_version=dg.DataVersion(found.digest[:16]),
                                metadata={"files": found.files, "bytes": found.bytes, "location": corpus.source_uri})


    @dg.multi_observable_source_asset(
        specs=[dg.AssetSpec(
            EXCLUSIONS, group_name=GOVERNANCE, owners=owners(GOVERNANCE), kinds={"sql"},
            description="The active exclusions (chunks, content hashes, documents) in the catalog; data "
                        "version = their digest, so a new exclusion or a revoke marks every retrieval "
                        "set, its index and their checks stale. Queries drop excluded chunks at once anyway.")],
        required_resource_keys={"catalog"})
    def exclusions(context) -> dg.ObserveResult:
        digest, count = exclusions_version(context.resources.catalog.open())
        return dg.ObserveResult(data_version=dg.DataVersion(digest), metadata={"active_exclusions": count})


def source_observations(catalog: Catalog, known_corpora: set[str],
                        seen: dict[str, str] | None = None) -> tuple[list[dg.AssetObservation], dict[str, str]]:
    """Observations for every source whose digest differs from `seen` (all when None), and the
    digests now. Keys of `seen`: corpus names, and "" for the exclusion list."""
    seen = seen or {}
    now = {name: v for name, v in corpus_versions(catalog).items() if name in known_corpora}
    digest, count = exclusions_version(catalog)
    events = [dg.AssetObservation(CORPUS_FILES, partition=name, tags={"dagster/data_version": v})
              for name, v in sorted(now.items()) if seen.get(name) != v]
    if seen.get("") != digest:
        events.append(dg.AssetObservation(EXCLUSIONS, metadata={"active_exclusions": count},
                                          tags={"dagster/data_version": digest}))
    now[""] = digest
    return events, now


def observe_sources(instance: dg.DagsterInstance, catalog: Catalog) -> int:
    """Record an observation of every source now (the CLI does this before it materializes, so
    the graph shows where each corpus came from); returns how many were recorded."""
    known = set(instance.get_dynamic_partitions(corpus_partitions.name))
    events, _ = source_observations(catalog, known)
    for event in events:
        instance.report_runless_asset_event(event)
    return len(events)


@dg.sensor(name="source_observer", minimum_interval_seconds=automation_interval(),
           default_status=automation_status(),
           description="Digests every corpus's files and the exclusion list; records an "
                       "observation when one changed, which the automation conditions act on.")
def source_observer(context: dg.SensorEvaluationContext, catalog: CatalogResource) -> dg.SensorResult:
    seen = json.loads(context.cursor) if context.cursor else None
    known = set(context.instance.get_dynamic_partitions(corpus_partitions.name))
    events, now = source_observations(catalog.open(), known, seen)
    if not events:
        return dg.SensorResult(skip_reason="no corpus file or exclusion changed", cursor=json.dumps(now))
    return dg.SensorResult(asset_events=events, cursor=json.dumps(now))
