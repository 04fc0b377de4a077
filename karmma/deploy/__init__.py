"""Deployment: ONNX export with the presence mask as an input, and prediction from what a robot has."""
