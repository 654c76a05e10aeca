"""Declarative automation: when a source or an upstream asset changes, exactly its dependents
re-materialize, and nothing runs past a failed blocking check.

- Feature and retrieval-set assets run when a dependency was updated (a corpus's files got a new
  digest, its documents were re-read, ...), when a partition is new, or when their code version
  changed, once nothing upstream is missing or running and every upstream blocking check passed.
- `faiss_index` runs only when its retrieval set's *data version* changed: a set re-pinned with
  the same chunks (its digest unchanged) keeps its index.
- Model and evaluation assets carry no condition: training is a deliberate, costly act; they
  show as stale in the UI (and `retro-ops train` / the Materialize button run them).

- The scale-out assets (`assets/sharded.py`) carry the same conditions only where
  RETRO_OPS_SHARDED_AUTOMATION=1 when the code location loads: shards are the alternative route to
  the same rows and index, and automating both routes would do every corpus's work twice.

The sensors that act on these are stopped unless RETRO_OPS_AUTOMATION=1 when the code location
loads (`retro-ops ui --automation` sets it); they can also be switched on in the UI (Automation).
They tick every 30 s, or every RETRO_OPS_AUTOMATION_INTERVAL seconds (`retro-ops ui --interval`).
"""

import os

import dagster as dg

AUTOMATION_ENV = "RETRO_OPS_AUTOMATION"  # 1: the automation sensors start on (`retro-ops ui --automation`)
INTERVAL_ENV = "RETRO_OPS_AUTOMATION_INTERVAL"  # seconds between the automation sensors' ticks (30)
SHARDED_ENV = "RETRO_OPS_SHARDED_AUTOMATION"  # 1: the scale-out assets are automated too
DEFAULT_INTERVAL_SECONDS = 30

AC = dg.AutomationCondition


def automation_status() -> dg.DefaultSensorStatus:
    """RUNNING when automation was asked for where the code location loads (a switch, not a secret)."""
    return dg.DefaultSensorStatus.RUNNING if switch(AUTOMATION_ENV) else dg.DefaultSensorStatus.STOPPED


def switch(name: str, default: bool = False) -> bool:
    """An on/off environment setting where the code location loads: 1/true/yes/on or
    0/false/no/off; anything else (unset included) is `default`."""
    raw = os.environ.get(name, "").strip().lower()
    return True if raw in ("1", "true", "yes", "on") else False if raw in ("0", "false", "no", "off") else default


def sharded_automation() -> bool:
    """Whether the scale-out assets carry automation conditions (RETRO_OPS_SHARDED_AUTOMATION)."""
    return switch(SHARDED_ENV)


def automation_interval() -> int:
    """Seconds between ticks of the source observer and the automation sensor, where the code
    location loads: RETRO_OPS_AUTOMATION_INTERVAL (at least 1), else 30."""
    raw = os.environ.get(INTERVAL_ENV, "").strip()
    if not raw:
        return DEFAULT_INTERVAL_SECONDS
    if not raw.isdigit() or int(raw) < 1:
        raise ValueError(f"{INTERVAL_ENV}={raw!r}: expected a whole number of seconds, at least 1")
    return int(raw)


def _when(trigger: dg.AutomationCondition, label: str) -> dg.AutomationCondition:
    started = (AC.newly_missing() | trigger | AC.code_version_changed()).since_last_handled()
    return (started & ~AC.any_deps_missing() & ~AC.any_deps_in_progress() & ~AC.in_progress()
            & AC.all_deps_blocking_checks_passed()).with_label(label)


#: documents, chunks, embeddings, scores, retrieval sets: any dependency updated
ON_UPSTREAM_CHANGE = _when(AC.any_deps_updated(), "on upstream change")
#: faiss_index: only when the retrieval set's content (data version) changed
ON_UPSTREAM_DATA_CHANGE = _when(AC.any_deps_match(AC.data_version_changed()), "on upstream data change")


def automation_sensor() -> dg.AutomationConditionSensorDefinition:
    return dg.AutomationConditionSensorDefinition(
        "retro_ops_automation", target=dg.AssetSelection.all(), default_status=automation_status(),
        minimum_interval_seconds=automation_interval(),
        description="Evaluates the assets' automation conditions and launches what they ask for.")
