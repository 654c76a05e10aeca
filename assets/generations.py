"""The generation log as an observable source asset: written by servers, observed by Dagster.

Dagster does not produce the log (every `/generate`, `retro-ops generate` and pyfunc call
appends to it), so it is a source asset whose observation reports the row count and the
LanceDB version, the version being its data version: the UI shows when it last changed. It sits
beside the retrieval sets its rows name (a dependency edge, for the graph's reading).
"""

import warnings

import dagster as dg

from assets.groups import SERVING, owners
from assets.resources import FeatureStoreResource
from assets.retrieval import retrieval_set
from retro_ops.generations.records import GENERATIONS

GENERATION_LOG = dg.AssetSpec(
    "generation_log", deps=[retrieval_set], group_name=SERVING, owners=owners(SERVING),
    kinds={"lancedb"},
    description=f"Every served generation (LanceDB `{GENERATIONS}`): prompt and output (or their "
                "hashes), model, retrieval-set version, deployment and the neighbour chunk ids.")


def _observed(store) -> tuple[dg.DataVersion, dict]:
    from retro_ops.generations.search import log_summary  # run-time: LanceDB

    summary = log_summary(store)
    return dg.DataVersion(str(summary["lancedb_version"])), {
        "rows": summary["rows"], "lancedb_version": summary["lancedb_version"], "table": GENERATIONS}


# Observable sources are "beta" in dagster 1.13 (the documented API, as in assets/sources.py):
# silence that one warning here, by name, rather than print it on every CLI command.
with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message=r".*`multi_observable_source_asset` is currently in beta",
                            category=dg.BetaWarning)

    @dg.multi_observable_source_asset(specs=[GENERATION_LOG])
    def generation_log(feature_store: FeatureStoreResource):
        """Row count and last LanceDB version of the generation log."""
        version, metadata = _observed(feature_store.open())
        yield dg.ObserveResult(asset_key=GENERATION_LOG.key, data_version=version, metadata=metadata)


def generation_log_observation(store) -> dg.AssetObservation:
    """The same observation as a runless event: the CLI records it before it materializes, so
    the graph never shows the log as "never observed" (an empty log reports 0 rows)."""
    version, metadata = _observed(store)
    return dg.AssetObservation(GENERATION_LOG.key, metadata=metadata,
                               tags={"dagster/data_version": version.value})


#: Observing the log is a run of its own (the UI's "Observe sources" does the same).
observe_generation_log = dg.define_asset_job("observe_generation_log", selection=[GENERATION_LOG.key])
