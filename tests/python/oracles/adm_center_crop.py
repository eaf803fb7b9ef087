"""Writes test images into a folder and the ADM evaluator's view of them.

usage: adm_center_crop.py DIR SIZE
  Writes DIR/images/... (PNG in several modes and sizes, one JPEG, in nested folders) and
  DIR/expected.npz with arr_0 = [center_crop_arr(PIL.Image.open(f).convert("RGB"), SIZE) for f in
  sorted files], where center_crop_arr is guided-diffusion's preprocessing of reference images:
  BOX-halve while the short side >= 2*SIZE, BICUBIC-resize the short side to SIZE, centre crop.
"""
import sys
from pathlib import Path

import numpy as np
from PIL import Image


def center_crop_arr(pil_image, image_size):
    while min(*pil_image.size) >= 2 * image_size:
        pil_image = pil_image.resize(tuple(x // 2 for x in pil_image.size), resample=Image.BOX)
    scale = image_size / min(*pil_image.size)
    pil_image = pil_image.resize(tuple(round(x * scale) for x in pil_image.size), resample=Image.BICUBIC)
    arr = np.array(pil_image)
    crop_y = (arr.shape[0] - image_size) // 2
    crop_x = (arr.shape[1] - image_size) // 2
    return arr[crop_y : crop_y + image_size, crop_x : crop_x + image_size]


out = Path(sys.argv[1])
size = int(sys.argv[2])
rng = np.random.RandomState(0)
root = out / "images"
(root / "b" / "c").mkdir(parents=True, exist_ok=True)


def smooth(h, w, c):
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([(x * 3 + y * (k + 1)) % 256 for k in range(c)], -1)
    return np.clip(base + rng.randint(-20, 21, base.shape), 0, 255).astype(np.uint8)


Image.fromarray(smooth(389, 517, 3)).save(root / "a.png")
Image.fromarray(smooth(300, 300, 4), "RGBA").save(root / "b" / "rgba.png")
Image.fromarray(smooth(100, 64, 1)[..., 0], "L").save(root / "b" / "c" / "gray.png")
Image.fromarray(smooth(131, 250, 3)).save(root / "b" / "wide.png")
Image.fromarray(smooth(200, 180, 3)).save(root / "photo.jpg", quality=90)
files = sorted(p for p in root.rglob("*") if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
crops = [center_crop_arr(Image.open(f).convert("RGB"), size) for f in files]
np.savez(out / "expected.npz", arr_0=np.stack(crops), names=np.array([str(f.relative_to(root)) for f in files]))
