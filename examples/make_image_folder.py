"""Write a small synthetic ImageFolder (random PNGs) and, optionally, a resnet18 state dict with torchvision's keys.

    python examples/make_image_folder.py DIR [--images 12] [--classes 3] [--state-dict r18.pth]

For trying the image-folder path (`tersim run ... --data DIR --preprocess imagenet`) without ImageNet: the images
are noise with a per-class colour cast, the weights random (seed 0): accuracies mean nothing, the plumbing is real.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--images", type=int, default=12)
    parser.add_argument("--classes", type=int, default=3)
    parser.add_argument("--state-dict", type=Path, help="also write zoo resnet18's random weights here (.pth)")
    opts = parser.parse_args()
    from PIL import Image

    rng = np.random.default_rng(0)
    for i in range(opts.images):
        c = i % opts.classes
        folder = opts.folder / f"class_{c}"
        folder.mkdir(parents=True, exist_ok=True)
        h, w = rng.integers(48, 97, 2)
        pixels = rng.integers(0, 200, (h, w, 3))
        pixels[..., c % 3] += 55
        Image.fromarray(pixels.astype(np.uint8)).save(folder / f"{i:04d}.png")
    print(f"wrote {opts.images} images in {opts.classes} class folders under {opts.folder}")
    if opts.state_dict is not None:
        import torch

        from tersim.models.zoo import build

        torch.save(build("resnet18", seed=0).state_dict(), opts.state_dict)
        print(f"wrote {opts.state_dict}")


if __name__ == "__main__":
    main()
