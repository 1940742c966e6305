"""Anomaly detection: streaming detectors, IsolationForest models, episodes, offline evaluation,
the analytics worker and the summary endpoint."""
