"""Per-model training logic (one file per model); see fabml.anomaly.method for the contract."""
