"""PyTorch: eager modules (fp32, fp16/bf16, torch.ao int8) and torch.compile (inductor)."""
