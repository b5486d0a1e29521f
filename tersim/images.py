"""Image folders as evaluation data: the `ImageFolder` layout (one sub-folder per class), decoded with Pillow.

    DIR/n01440764/ILSVRC2012_val_00000293.JPEG    class folders, sorted by name -> class 0, 1, ...
    DIR/n01443537/...                            (or their order in a --class-map file)

Preprocessing (`--preprocess`), applied per image in the DataLoader's worker processes:
  * `imagenet` (the standard torchvision evaluation recipe): resize so the shorter side is 256 pixels with
    Pillow's bilinear filter (the longer side int(256 * long / short)), center-crop 224x224 (offsets
    int(round((size - 224) / 2))), scale to [0, 1] (/255), normalize per channel with the ImageNet
    mean (0.485, 0.456, 0.406) and std (0.229, 0.224, 0.225), in float32.
  * `resize=H,W`: bilinear resize to exactly HxW, scale to [0, 1]; no normalization.
  * `none`: decode and scale to [0, 1] only; every image must already have the model's input size.
Images are converted to RGB (or L for a 1-channel model). Pillow is the `images` extra.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tersim.errors import DataError

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGENET_RESIZE, IMAGENET_CROP = 256, 224


@dataclass(frozen=True)
class Preprocess:
    """One of the recipes above: kind 'imagenet' | 'resize' | 'none' (size: (H, W) for 'resize')."""

    kind: str = "imagenet"
    size: tuple[int, int] | None = None

    def __str__(self) -> str:
        return f"resize={self.size[0]},{self.size[1]}" if self.kind == "resize" else self.kind

    def output_hw(self) -> tuple[int, int] | None:
        return (IMAGENET_CROP, IMAGENET_CROP) if self.kind == "imagenet" else self.size


def parse_preprocess(text: str | Preprocess | None) -> Preprocess:
    """'imagenet' | 'none' | 'resize=H,W' -> Preprocess (None -> imagenet)."""
    if isinstance(text, Preprocess):
        return text
    if text is None or text == "imagenet":
        return Preprocess("imagenet")
    if text == "none":
        return Preprocess("none")
    key, sep, value = text.partition("=")
    if key == "resize" and sep:
        try:
            h, w = (int(v) for v in value.split(","))
        except ValueError:
            h = w = 0
        if h > 0 and w > 0:
            return Preprocess("resize", (h, w))
    raise DataError(f"--preprocess '{text}': expected imagenet, none or resize=H,W (positive ints)")


def _pillow():
    try:
        from PIL import Image
    except ImportError:
        raise DataError("image folders need Pillow: pip install 'tersim[images]'") from None
    return Image


def preprocess_image(path: str | Path, recipe: Preprocess, channels: int = 3) -> np.ndarray:
    """Decode one image file and apply `recipe`: float32 (C, H, W)."""
    image_mod = _pillow()
    try:
        with image_mod.open(path) as img:
            img = img.convert("L" if channels == 1 else "RGB")
            if recipe.kind == "imagenet":
                w, h = img.size
                short, long = (w, h) if w <= h else (h, w)
                new_short, new_long = IMAGENET_RESIZE, int(IMAGENET_RESIZE * long / short)
                new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
                img = img.resize((new_w, new_h), image_mod.BILINEAR)
                top = int(round((new_h - IMAGENET_CROP) / 2.0))
                left = int(round((new_w - IMAGENET_CROP) / 2.0))
                img = img.crop((left, top, left + IMAGENET_CROP, top + IMAGENET_CROP))
            elif recipe.kind == "resize":
                img = img.resize((recipe.size[1], recipe.size[0]), image_mod.BILINEAR)
            pixels = np.asarray(img, dtype=np.uint8)
    except (OSError, ValueError) as exc:  # Pillow's UnidentifiedImageError is an OSError
        raise DataError(f"{path}: cannot decode image: {exc}") from None
    x = (pixels.astype(np.float32) / np.float32(255.0)).reshape(pixels.shape[0], pixels.shape[1], -1)
    x = np.ascontiguousarray(x.transpose(2, 0, 1))
    if recipe.kind == "imagenet" and channels == 3:
        mean = np.asarray(IMAGENET_MEAN, dtype=np.float32).reshape(3, 1, 1)
        std = np.asarray(IMAGENET_STD, dtype=np.float32).reshape(3, 1, 1)
        x = (x - mean) / std
    return x


def read_class_map(path: str | Path) -> list[str]:
    """Class folder names in index order: a text file with one name per line (first word; e.g. the ImageNet
    wnid list 'n01440764 tench, ...') or a JSON object {name: index}."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: class map not found")
    text = path.read_text()
    if path.suffix == ".json":
        try:
            mapping = json.loads(text)
            order = sorted(mapping, key=lambda k: int(mapping[k]))
            if sorted(int(v) for v in mapping.values()) != list(range(len(mapping))):
                raise ValueError("indices must be 0..n-1, each once")
        except (ValueError, TypeError, AttributeError) as exc:
            raise DataError(f"{path}: class map must be a JSON object {{name: index}}: {exc}") from None
        return order
    names = [line.split()[0] for line in text.splitlines() if line.strip()]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise DataError(f"{path}: class '{duplicates[0]}' listed twice")
    if not names:
        raise DataError(f"{path}: class map is empty")
    return names


def scan_folder(root: str | Path, class_map: str | Path | None = None) -> tuple[list[tuple[str, int]], list[str]]:
    """(path, class index) of every image under `root`'s class folders, sorted like torchvision's ImageFolder
    (classes by name or class-map order, files by path, sub-folders followed); and the class names."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: data folder not found")
    folders = sorted(e.name for e in os.scandir(root) if e.is_dir())
    if not folders:
        raise DataError(f"{root}: is a folder without class sub-folders (image data wants DIR/<class>/<image>.jpg)")
    classes = read_class_map(class_map) if class_map is not None else folders
    index = {name: i for i, name in enumerate(classes)}
    unknown = [f for f in folders if f not in index]
    if unknown:
        raise DataError(f"{root}/{unknown[0]}: class folder not in the class map {class_map}")
    samples = []
    for folder in sorted(folders, key=index.__getitem__):
        for dirpath, _, filenames in sorted(os.walk(root / folder, followlinks=True)):
            for fname in sorted(filenames):
                if fname.lower().endswith(IMG_EXTENSIONS):
                    samples.append((os.path.join(dirpath, fname), index[folder]))
    if not samples:
        raise DataError(f"{root}: no images ({', '.join(IMG_EXTENSIONS)}) in the class folders")
    return samples, classes


class ImageFolderDataset:
    """Map-style dataset (a torch Dataset by protocol): item i -> (float32 C,H,W array, class index).

    Holds only file names, so it pickles cheaply to DataLoader workers and to sharded evaluation."""

    def __init__(self, root: str | Path, preprocess: str | Preprocess | None = None,
                 class_map: str | Path | None = None, expected_shape: tuple[int, ...] | None = None):
        self.root = Path(root)
        self.preprocess = parse_preprocess(preprocess)
        self.expected_shape = tuple(expected_shape) if expected_shape is not None else None
        self.channels = self.expected_shape[0] if self.expected_shape else 3
        self.samples, self.classes = scan_folder(self.root, class_map)
        hw = self.preprocess.output_hw()
        if self.expected_shape is not None and hw is not None and tuple(self.expected_shape[1:]) != hw:
            raise DataError(f"{root}: --preprocess {self.preprocess} makes {hw[0]}x{hw[1]} images, the model "
                            f"expects {self.expected_shape}")
        _pillow()  # fail before any worker starts

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[np.ndarray, int]:
        path, label = self.samples[i]
        x = preprocess_image(path, self.preprocess, self.channels)
        if self.expected_shape is not None and x.shape != self.expected_shape:
            raise DataError(f"{path}: image is {x.shape} after --preprocess {self.preprocess}, the model expects "
                            f"{self.expected_shape}")
        return x, label

    def digest(self) -> str:
        """Identity for caches: file names, sizes and modification times, labels, preprocessing (reading every
        image's bytes would cost as much as decoding them)."""
        h = hashlib.sha256(f"{self.preprocess}|{self.expected_shape}".encode())
        for path, label in self.samples:
            st = os.stat(path)
            h.update(f"{os.path.relpath(path, self.root)}|{label}|{st.st_size}|{st.st_mtime_ns}\n".encode())
        return h.hexdigest()
