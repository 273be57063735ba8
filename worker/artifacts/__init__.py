"""Artifacts: the model each unit benchmarked, saved so it can be deployed or scored elsewhere.

- torch modes: TorchScript archives (`torchscript.py`), loaded with `torch.jit.load`;
- ONNX Runtime modes: the `.onnx` file ORT ran, copied byte for byte (`save.py`);
- `qbench export`: sha256-checked copies with a JSON card beside each (`export.py`, `card.py`).

Layout: <results>/artifacts/<job_id>/<model_id>/<mode>.<ext> (`store.py`).
"""
