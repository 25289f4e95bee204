"""Tracking: the MLflow run of a training or evaluation job (`tracker.py`: a background thread that never stops
training; it writes the run folder's record of its store and run), the host and device facts logged with it
(`host.py`), the metrics a resumed job sends after the store was away (`backfill.py`), and the store itself
(`store.py`: where a job tracks to (`tracking_uri`, the run folder's record `tracking.json`), a URI as it may be
shown (`redact`), a URI this MLflow can use, a store that is missing or does not answer)."""
