"""aie: deploy and use an MLflow experiment-tracking stack."""

__version__ = "0.1.0"
