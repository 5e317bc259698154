"""JSON Schemas of the two output entities, TrainingMetrics and ExperimentResults."""

import json
from importlib import resources

TRAINING_METRICS = "training_metrics.schema.json"
EXPERIMENT_RESULTS = "experiment_results.schema.json"


def load_schema(name: str) -> dict:
    return json.loads(resources.files(__name__).joinpath(name).read_text())
