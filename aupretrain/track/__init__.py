"""Tracking: the MLflow run of a training or evaluation job (`tracker.py`: a background thread that never stops
training, the run folder's record of its store and run), the host and device facts logged with it (`host.py`),
the metrics a resumed job sends after the store was away (`backfill.py`), and the checks and messages about the
store itself (`store.py`: a URI MLflow can use, a store that is missing or does not answer)."""
