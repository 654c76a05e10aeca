"""The one way a catalogued model becomes a model: `generate`, `eval` and the evaluation assets,
the server, the MLflow pyfunc and RETROfit's parent all load through `load_verified`.

The checkpoint's model files are read once (`read_checkpoint`); each file's sha256 is compared
with the catalog's manifest of that model, and the model, config and vocabulary are built from
the very bytes that were hashed. A difference is refused (`ModelIntegrityError`) naming the file.

A model recorded before manifests (migration 0012) is verified as far as its record goes: the
weights by `weights_sha256`, `config.json` against the config the catalog recorded (as a config,
not byte for byte), `vocab.json` by the recorded vocabulary digest (64 bits; recorded since
0006). What its record cannot check is named as not covered: logged at load, and listed by
`retro-ops lineage verify`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from retro_ops.catalog import ModelInfo
from retro_ops.errors import CheckpointError, ModelIntegrityError
from retro_ops.model import Retro, RetroConfig
from retro_ops.training.checkpoint import (
    CONFIG_FILE, MODEL_FILE, VOCAB_FILE, CheckpointFiles, manifest_digest, read_checkpoint,
)
from retro_ops.training.vocab import Vocabulary

log = logging.getLogger(__name__)
MANIFEST = "manifest"  # the name of the check on the catalog's record itself
__all__ = ["FileCheck", "VerifiedModel", "file_checks", "load_verified", "record_fields",
           "registered_model", "verify_files"]


@dataclass(frozen=True)
class FileCheck:
    name: str  # a file of the checkpoint, or MANIFEST for the catalog's record itself
    ok: bool | None  # None: the catalog's record cannot check it (not covered)
    detail: str


@dataclass(frozen=True)
class VerifiedModel:
    info: ModelInfo
    model: Retro
    vocab: Vocabulary
    checks: tuple[FileCheck, ...]

    @property
    def not_covered(self) -> list[str]:
        return [c.name for c in self.checks if c.ok is None]


def record_fields(files: CheckpointFiles) -> dict:
    """What the catalog records of a checkpoint (`record_model` fields), from the bytes read."""
    return {"weights_sha256": files.manifest[MODEL_FILE], "checkpoint_sha256": files.digest,
            "checkpoint_manifest": dict(files.manifest)}


def _compare(name: str, actual: str | None, recorded: str | None) -> FileCheck:
    if actual is None:
        return FileCheck(name, False, f"is missing (the catalog recorded sha256 {str(recorded)[:16]}...)")
    if recorded is None:
        return FileCheck(name, False, "is not in the catalog's manifest of this model")
    if actual != recorded:
        return FileCheck(name, False, f"hashes to {actual[:16]}..., the catalog recorded {recorded[:16]}...")
    return FileCheck(name, True, f"sha256 {actual[:16]}... matches the catalog")


def _legacy_config(info: ModelInfo, files: CheckpointFiles) -> FileCheck:
    if CONFIG_FILE not in files.data:
        return FileCheck(CONFIG_FILE, False, "is missing")
    if not info.config:
        return FileCheck(CONFIG_FILE, None, "not covered: the catalog recorded no config")
    try:
        same = files.config() == RetroConfig.from_dict(info.config)
    except (CheckpointError, TypeError, ValueError):
        same = False
    return FileCheck(CONFIG_FILE, same, "equals the config the catalog recorded (as a config, not "
                     "byte for byte)" if same else "differs from the config the catalog recorded")


def _legacy_vocabulary(info: ModelInfo, files: CheckpointFiles) -> FileCheck:
    if not info.vocabulary_digest:
        return FileCheck(VOCAB_FILE, None, "not covered: recorded before vocabulary digests (0006)")
    if VOCAB_FILE not in files.data:
        return FileCheck(VOCAB_FILE, False, "is missing")
    try:
        actual = files.vocabulary().digest
    except CheckpointError:
        return FileCheck(VOCAB_FILE, False, "is not a vocabulary")
    return FileCheck(VOCAB_FILE, actual == info.vocabulary_digest,
                     f"vocabulary digest (64 bits) {actual} "
                     f"{'matches' if actual == info.vocabulary_digest else 'differs from'} the recorded "
                     f"{info.vocabulary_digest}")


def file_checks(info: ModelInfo, files: CheckpointFiles) -> list[FileCheck]:
    """Each model file of `files` against the catalog's record of `info` (never raises)."""
    recorded = info.checkpoint_manifest
    if recorded is None:  # recorded before 0012: as far as the record goes
        checks = [_compare(MODEL_FILE, files.manifest.get(MODEL_FILE), info.weights_sha256),
                  _legacy_config(info, files), _legacy_vocabulary(info, files)]
        return [FileCheck(MANIFEST, None, "recorded before checkpoint manifests (migration 0012): "
                          "only the weights were hashed at training")] + checks
    checks = [] if manifest_digest(recorded) == info.checkpoint_sha256 else [FileCheck(
        MANIFEST, False, "does not hash to the recorded checkpoint_sha256 (the record was altered)")]
    return checks + [_compare(name, files.manifest.get(name), recorded.get(name))
                     for name in sorted(set(recorded) | set(files.manifest))]


def _where(folder: Path, check: FileCheck) -> str:
    return "the catalog's manifest" if check.name == MANIFEST else str(folder / check.name)


def verify_files(info: ModelInfo, files: CheckpointFiles) -> list[FileCheck]:
    """`file_checks`, refusing any difference in one line that names each file that differs."""
    checks = file_checks(info, files)
    bad = [c for c in checks if c.ok is False]
    if bad:
        raise ModelIntegrityError(
            f"model {info.ref}: " + "; ".join(f"{_where(files.folder, c)} {c.detail}" for c in bad)
            + "; refusing to load a checkpoint that is not the registered one (restore it, or retrain)")
    uncovered = [c for c in checks if c.ok is None]
    if uncovered:
        log.warning("model %s: %s", info.ref, "; ".join(f"{c.name}: {c.detail}" for c in uncovered))
    return checks


def load_verified(info: ModelInfo) -> VerifiedModel:
    """The catalogued model and its vocabulary, built from the checkpoint bytes just verified."""
    folder = Path(info.checkpoint_dir)
    try:
        files = read_checkpoint(folder)
    except OSError as exc:
        raise ModelIntegrityError(f"model {info.ref}: cannot read its checkpoint in {folder}: "
                                  f"{exc.strerror or exc}") from exc
    checks = verify_files(info, files)
    return VerifiedModel(info, files.model(), files.vocabulary(), tuple(checks))


def registered_model(catalog, files: CheckpointFiles, mlflow_run_id: str | None = None
                     ) -> tuple[ModelInfo, list[FileCheck]]:
    """The catalog's model whose checkpoint `files` are, verified file by file: the model of the
    MLflow run that logged them when it is named (a difference then names the file), else the
    newest whose checkpoint digest (or, recorded before 0012, weights) they match. Refused with
    ModelIntegrityError when the catalog knows no such model."""
    models = list(reversed(catalog.list_models()))  # newest first
    candidates = ([m for m in models if mlflow_run_id and m.mlflow_run_id == mlflow_run_id]
                  or [m for m in models if m.checkpoint_sha256 == files.digest]
                  or [m for m in models if m.checkpoint_manifest is None
                      and m.weights_sha256 == files.manifest.get(MODEL_FILE)])
    if not candidates:
        raise ModelIntegrityError(f"{files.folder}: no model in the catalog has this checkpoint "
                                  f"(sha256 {files.digest[:16]}...); refusing to load it")
    return candidates[0], verify_files(candidates[0], files)
