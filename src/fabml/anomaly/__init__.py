"""Visual anomaly detection: seven models on one contract, thresholds, grades, metrics, ONNX export."""
