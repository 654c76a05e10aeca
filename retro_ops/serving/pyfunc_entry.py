"""Models-from-code entry point for the RETRO pyfunc (MLflow executes this file on load)."""

from mlflow.models import set_model

from retro_ops.serving.pyfunc import RetroPyfunc

set_model(RetroPyfunc())
