"""The manifest's `preprocess` block: how a model expects its input image (torch-free).

A pixel p in [0, 255] becomes (p * scale - mean[c]) / std[c] in the channel order given, after
the image is brought to the model's input size by `resize`:
  stretch            resize both sides to the input size (aspect ratio not kept)
  letterbox          fit inside the input size keeping the aspect ratio, pad with pad_value
  shorter_side_crop  resize the shorter side to input / crop_ratio, then centre-crop
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, StrictFloat, StrictInt, field_validator


class PreprocessSpec(BaseModel):
    # Strict numbers as in the rest of the manifest ("114" is not 114), finite ones only: a
    # NaN or inf here would pass every check and turn each input into NaN.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    resize: Literal["stretch", "letterbox", "shorter_side_crop"] = "stretch"
    scale: StrictFloat = Field(default=1 / 255, gt=0, le=1e6)
    mean: tuple[StrictFloat, ...] = Field(default=(0.0, 0.0, 0.0), max_length=3)
    std: tuple[StrictFloat, ...] = Field(default=(1.0, 1.0, 1.0), max_length=3)
    channels: Literal["rgb", "bgr"] = "rgb"
    pad_value: StrictInt = Field(default=114, ge=0, le=255)  # letterbox border, in pixel units
    crop_ratio: StrictFloat = Field(default=0.875, gt=0, le=1)  # shorter_side_crop: crop / resize
    interpolation: Literal["bilinear", "nearest", "bicubic"] = "bilinear"

    @field_validator("mean", "std")
    @classmethod
    def _three_channels(cls, v: tuple[float, ...]) -> tuple[float, ...]:
        if len(v) != 3:
            raise ValueError(f"needs 3 values (one per channel), got {len(v)}")
        return v

    @field_validator("std")
    @classmethod
    def _positive_std(cls, v: tuple[float, ...]) -> tuple[float, ...]:
        if any(s <= 1e-12 for s in v):
            raise ValueError("every std value must be positive")
        return v

    def describe(self) -> str:
        """One line for notes and the export card."""
        norm = "" if self.mean == (0.0, 0.0, 0.0) and self.std == (1.0, 1.0, 1.0) else \
            f", mean {list(self.mean)}, std {list(self.std)}"
        return f"{self.resize}, {self.channels.upper()}, x{self.scale:.6g}{norm}"


IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
