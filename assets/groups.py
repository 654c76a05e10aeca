"""The asset groups, one per pipeline stage, and who owns each: the graph reads left to right
as the pipeline does (corpora -> features -> retrieval -> models -> evaluation), with the
governance assets (exclusions, chunk scores) beside it."""

CORPORA = "corpora"
FEATURES = "features"
RETRIEVAL = "retrieval"
MODELS = "models"
EVALUATION = "evaluation"
GOVERNANCE = "governance"
SERVING = "serving"  # what deployed models wrote (the generation log)
SCALE_OUT = "scale_out"  # the sharded path of features and indices (assets/sharded.py)

_OWNER = {CORPORA: "team:data", FEATURES: "team:data", RETRIEVAL: "team:retrieval",
          MODELS: "team:modelling", EVALUATION: "team:modelling", GOVERNANCE: "team:governance",
          SERVING: "team:serving", SCALE_OUT: "team:data"}


def owners(group: str) -> list[str]:
    return [_OWNER[group]]
