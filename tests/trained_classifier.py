"""A real trained classifier for the tests: resnet18 learns three grey levels in seconds.

Its inputs are normalised with a non-trivial per-channel mean/std, so a model fed raw [0, 1]
pixels (a missing normalisation) sees every class near the middle one and its predictions
visibly change. Images are written as an ImageFolder; the label order (MID, DARK, BRIGHT) is
not the sorted folder order, so only outputs.labels maps folders to the right indices.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torchvision
from PIL import Image

from qbench.preprocess.spec import PreprocessSpec
from qbench.preprocess.transform import load_images

LABELS = ["mid", "dark", "bright"]  # output index -> folder name
LEVELS = {"dark": 0.36, "mid": 0.5, "bright": 0.64}
PREPROCESS = {"mean": [0.45, 0.5, 0.55], "std": [0.07, 0.08, 0.09], "resize": "stretch"}
SIZE = (32, 32)


def write_images(root: Path, per_class: int, seed: int) -> list[tuple[Path, int]]:
    rng = np.random.default_rng(seed)
    files = []
    for index, name in enumerate(LABELS):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            level = LEVELS[name] + rng.normal(0, 0.015)
            img = np.clip(rng.normal(level, 0.03, (*SIZE, 3)), 0, 1)
            y, x = rng.integers(0, SIZE[0] - 8, 2)
            img[y:y + 8, x:x + 8] = rng.uniform(0.3, 0.7, 3)  # a distracting patch
            path = root / name / f"{i:03d}.png"
            Image.fromarray((img * 255).astype(np.uint8)).save(path)
            files.append((path, index))
    return files


def train_classifier(out: Path, seed: int = 0, steps: int = 25, max_steps: int = 400) -> Path:
    """Train on freshly written images (not the test set) and save the state_dict.

    One thread, whatever ran before: the thread count changes float summation order, so the
    same seed would otherwise train a slightly different model alone and inside the suite.
    Training goes on past `steps` until every image of a separate check set is right: a fixed
    step count trained a 0.96 model on one CPU and a 0.67 one on another (the ISA changes the
    float rounding, which compounds over the steps), and the tests need a good model."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _train(out, seed, steps, max_steps)
    finally:
        torch.set_num_threads(threads)


def _tensors(root: Path, per_class: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    files = write_images(root, per_class, seed)
    x, _ = load_images([f for f, _ in files], PreprocessSpec(**PREPROCESS), SIZE)
    return x, torch.tensor([c for _, c in files])


def _train(out: Path, seed: int, steps: int, max_steps: int) -> Path:
    torch.manual_seed(seed)
    x, y = _tensors(out.parent / "train_images", 16, seed + 100)
    check_x, check_y = _tensors(out.parent / "check_images", 16, seed + 200)
    model = torchvision.models.resnet18(weights=None, num_classes=len(LABELS))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for step in range(1, max_steps + 1):
        model.train()
        idx = torch.randint(0, len(y), (16,))
        loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step >= steps and step % 5 == 0 and _accuracy(model, check_x, check_y) == 1.0:
            break
    else:
        raise RuntimeError(f"the test classifier did not learn its check set in {max_steps} steps")
    model.eval()
    torch.save(model.state_dict(), out)
    return out


def _accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()


OUTLIER_BLOCK = "layer3.0"  # with_outlier_channel's sensitive block


def with_outlier_channel(checkpoint: Path, out: Path, block: str = OUTLIER_BLOCK,
                         scale: float = 1000.0) -> Path:
    """The same function with one int8-sensitive spot: channel 0 of `block`'s first
    activation made `scale` times larger (bn1's weight and bias) and conv2's weights for that
    input channel divided by it. ReLU is positively homogeneous, so the float model computes
    the same logits; but one u8 scale per tensor, set by that channel, rounds the block's other
    channels away, as a depthwise conv's few heavily weighted channels do in real models. Only
    keeping both of the block's convs float (the tensor between them then stays float)
    removes the error: a mixed-precision search has something real to find."""
    state = {k: v.clone() for k, v in torch.load(checkpoint, weights_only=True).items()}
    state[f"{block}.bn1.weight"][0] *= scale
    state[f"{block}.bn1.bias"][0] *= scale
    state[f"{block}.conv2.weight"][:, 0] /= scale
    torch.save(state, out)
    return out


def classifier_folder(root: Path) -> Path:
    """A job folder holding the trained classifier (models/grey.pt) and held-out images
    (data/photos, 8 per class, 24 in all)."""
    (root / "models").mkdir()
    train_classifier(root / "models" / "grey.pt")
    write_images(root / "data" / "photos", 8, seed=7)
    return root
