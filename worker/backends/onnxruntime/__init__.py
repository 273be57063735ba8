"""ONNX Runtime: sessions over an ONNX file exported from torch or given as is."""
