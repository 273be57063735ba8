"""OpenVINO: a torch model converted (or an ONNX file read) and compiled for the CPU."""
