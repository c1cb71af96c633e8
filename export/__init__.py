"""From a trained checkpoint to ONNX, precision artifacts (FP16, INT8 Q/DQ) and TensorRT engines."""
