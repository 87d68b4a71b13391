"""The name of the file that describes a model folder `llmasr export` or `llmasr convert funasr` wrote (its
architecture, weight files, frontend and prompt; llmasr.models.exported reads it). Named here, below every module
that builds or reads models, so that the builder can name it in an error without importing the reader."""

MODEL_FILE = "llmasr_model.yaml"
