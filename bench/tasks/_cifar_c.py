"""CIFAR-10-C's 15 common corruptions at severities 1-5, generated from CIFAR-10 test images.

An APPROXIMATION of Hendrycks & Dietterich (ICLR 2019), used only when the real CIFAR-10-C .npy files
are absent. The severity parameters are those of the authors' make_cifar_c.py (the 32-px table, not
ImageNet-C's); the operations are re-implemented with numpy/scipy/scikit-image/PIL/torch because the
original needs OpenCV and ImageMagick (Wand), and the maintained `imagecorruptions` package (which
pip can fetch here) carries ImageNet-C's 224-px parameters and needs opencv-python. Known differences:
  motion_blur, snow   ImageMagick's motion blur -> a one-sided Gaussian-weighted line kernel (torch conv);
  frost               the frost photographs are not shipped -> a seeded plasma-fractal ice texture;
  defocus_blur        cv2 3x3 Gaussian anti-aliasing of the disk -> scipy gaussian_filter(radius=1);
  elastic_transform   cv2.warpAffine -> scipy.ndimage.affine_transform (mode mirror);
  zoom_blur           scipy zoom per image -> torch bilinear resize (align_corners=True).
Randomness: one numpy Generator per (seed, corruption, severity); the same images in the same order
give the same corrupted set, byte for byte on one machine.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

CORRUPTIONS = ("gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "glass_blur", "motion_blur",
               "zoom_blur", "snow", "frost", "fog", "brightness", "contrast", "elastic_transform", "pixelate",
               "jpeg_compression")
SEVERITIES = (1, 2, 3, 4, 5)


def corrupt(images: np.ndarray, corruption: str, severity: int, seed: int) -> np.ndarray:
    """uint8 [N, 3, 32, 32] -> uint8 [N, 3, 32, 32] corrupted at `severity` (1..5)."""
    from bench.seeding import derive_seed

    rng = np.random.default_rng(derive_seed(seed, "cifar10c", corruption, severity))
    x = images.transpose(0, 2, 3, 1).astype(np.float32) / 255.0  # [N, H, W, 3] in [0, 1]
    out = _FUNCS[corruption](x, severity - 1, rng, images)
    return np.uint8(np.clip(out, 0, 255)).transpose(0, 3, 1, 2).copy()  # truncation, as np.uint8 in the original


# ---- helpers ------------------------------------------------------------------------------------
def _gauss(x: np.ndarray, sigma: float) -> np.ndarray:
    """skimage.filters.gaussian(multichannel=True) on a batch [N, H, W, C]: spatial axes only."""
    from scipy.ndimage import gaussian_filter

    return gaussian_filter(x, sigma=(0, sigma, sigma, 0), mode="nearest", truncate=4.0)


def _conv(x: np.ndarray, kernels: np.ndarray, pad_mode: str = "reflect") -> np.ndarray:
    """Per-image 2-D kernels [N or 1, k, k] applied to every channel of x [N, H, W, C] (torch conv)."""
    import torch
    import torch.nn.functional as F

    n, h, w, c = x.shape
    k = kernels.shape[-1]
    t = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2))).reshape(1, n * c, h, w).float()
    t = F.pad(t, (k // 2,) * 4, mode=pad_mode)
    ker = torch.from_numpy(np.broadcast_to(kernels, (n, k, k)).astype(np.float32))
    ker = ker.repeat_interleave(c, 0)[:, None].flip(-1, -2)  # convolution, not correlation
    out = F.conv2d(t, ker, groups=n * c)
    return out.reshape(n, c, h, w).numpy().transpose(0, 2, 3, 1)


def _line_kernels(radius: float, sigma: float, angles_deg: np.ndarray) -> np.ndarray:
    """One-sided motion-blur kernels (ImageMagick-like): Gaussian weights along a ray at each angle."""
    r = int(np.ceil(radius))
    size = 2 * r + 1
    t = np.arange(0, r + 1, dtype=np.float32)
    wts = np.exp(-(t ** 2) / (2 * sigma ** 2))
    ks = np.zeros((len(angles_deg), size, size), np.float32)
    for i, a in enumerate(np.deg2rad(angles_deg)):
        xs = np.clip(np.round(r + t * np.cos(a)).astype(int), 0, size - 1)
        ys = np.clip(np.round(r - t * np.sin(a)).astype(int), 0, size - 1)
        np.add.at(ks[i], (ys, xs), wts)
    return ks / ks.sum(axis=(1, 2), keepdims=True)


def _motion(x: np.ndarray, radius: float, sigma: float, angles: np.ndarray) -> np.ndarray:
    return _conv(x, _line_kernels(radius, sigma, angles), pad_mode="replicate")


def _clipped_zoom(x: np.ndarray, z: float) -> np.ndarray:
    """Centre crop of side ceil(h/z) zoomed back to h x h (batch [N, H, W, C])."""
    import torch
    import torch.nn.functional as F

    h = x.shape[1]
    ch = int(np.ceil(h / z))
    top = (h - ch) // 2
    crop = torch.from_numpy(np.ascontiguousarray(x[:, top:top + ch, top:top + ch].transpose(0, 3, 1, 2)))
    size = int(round(ch * z))
    big = F.interpolate(crop.float(), size=(size, size), mode="bilinear", align_corners=True).numpy()
    trim = (size - h) // 2
    return big[:, :, trim:trim + h, trim:trim + h].transpose(0, 2, 3, 1)


def _plasma(rng: np.random.Generator, n: int, mapsize: int = 32, wibbledecay: float = 3.0) -> np.ndarray:
    """Diamond-square height maps [n, mapsize, mapsize] in [0, 1] (make_cifar_c's plasma_fractal, batched)."""
    m = np.zeros((n, mapsize, mapsize))
    step, wibble = mapsize, 100.0

    def wibbled(a):
        return a / 4 + wibble * rng.uniform(-wibble, wibble, a.shape)

    while step >= 2:
        half = step // 2
        corner = m[:, 0:mapsize:step, 0:mapsize:step]
        sq = corner + np.roll(corner, -1, axis=1)
        sq = sq + np.roll(sq, -1, axis=2)
        m[:, half:mapsize:step, half:mapsize:step] = wibbled(sq)
        dr = m[:, half:mapsize:step, half:mapsize:step]
        ul = m[:, 0:mapsize:step, 0:mapsize:step]
        lt = dr + np.roll(dr, 1, axis=1) + ul + np.roll(ul, -1, axis=2)
        m[:, 0:mapsize:step, half:mapsize:step] = wibbled(lt)
        tt = dr + np.roll(dr, 1, axis=2) + ul + np.roll(ul, -1, axis=1)
        m[:, half:mapsize:step, 0:mapsize:step] = wibbled(tt)
        step //= 2
        wibble /= wibbledecay
    m -= m.min(axis=(1, 2), keepdims=True)
    return m / m.max(axis=(1, 2), keepdims=True)


def _pil_each(images_uint8: np.ndarray, fn: Callable) -> np.ndarray:
    from PIL import Image

    out = [np.asarray(fn(Image.fromarray(im.transpose(1, 2, 0))), dtype=np.float32) for im in images_uint8]
    return np.stack(out)


# ---- the 15 corruptions (x float [N, 32, 32, 3] in [0, 1]; return values in [0, 255]) -------------
def gaussian_noise(x, s, rng, _):
    c = [0.04, 0.06, .08, .09, .10][s]
    return np.clip(x + rng.normal(size=x.shape, scale=c), 0, 1) * 255


def shot_noise(x, s, rng, _):
    c = [500, 250, 100, 75, 50][s]
    return np.clip(rng.poisson(x * c) / c, 0, 1) * 255


def impulse_noise(x, s, rng, _):
    c = [.01, .02, .03, .05, .07][s]
    hit = rng.random(x.shape) < c
    salt = rng.random(x.shape) < 0.5
    return np.where(hit, salt.astype(np.float32), x) * 255


def defocus_blur(x, s, rng, _):
    from scipy.ndimage import gaussian_filter

    radius, alias = [(0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1, 0.2), (1.5, 0.1)][s]
    L = np.arange(-8, 9)
    X, Y = np.meshgrid(L, L)
    disk = ((X ** 2 + Y ** 2) <= radius ** 2).astype(np.float32)
    disk = gaussian_filter(disk / disk.sum(), alias, radius=1, mode="mirror")
    return np.clip(_conv(x, disk[None]), 0, 1) * 255


def glass_blur(x, s, rng, _):
    sigma, delta, iters = [(0.05, 1, 1), (0.25, 1, 1), (0.4, 1, 1), (0.25, 1, 2), (0.4, 1, 2)][s]
    y = np.uint8(_gauss(x, sigma) * 255)
    n, h = len(y), y.shape[1]
    rows = np.arange(n)
    for _ in range(iters):  # the original's local pixel swaps, every image at once
        for hh in range(h - delta, delta, -1):
            for ww in range(h - delta, delta, -1):
                d = rng.integers(-delta, delta, size=(n, 2))
                h2, w2 = hh + d[:, 1], ww + d[:, 0]
                a, b = y[rows, hh, ww].copy(), y[rows, h2, w2].copy()
                y[rows, hh, ww], y[rows, h2, w2] = b, a
    return np.clip(_gauss(y / 255.0, sigma), 0, 1) * 255


def motion_blur(x, s, rng, _):
    radius, sigma = [(6, 1), (6, 1.5), (6, 2), (8, 2), (9, 2.5)][s]
    return np.clip(_motion(x * 255, radius, sigma, rng.uniform(-45, 45, len(x))), 0, 255)


def zoom_blur(x, s, rng, _):
    zooms = np.arange(1, [1.06, 1.11, 1.16, 1.21, 1.26][s], 0.01)
    out = np.zeros_like(x)
    for z in zooms:
        out += _clipped_zoom(x, z)
    return np.clip((x + out) / (len(zooms) + 1), 0, 1) * 255


def snow(x, s, rng, _):
    c = [(0.1, 0.2, 1, 0.6, 8, 3, 0.95), (0.1, 0.2, 1, 0.5, 10, 4, 0.9), (0.15, 0.3, 1.75, 0.55, 10, 4, 0.9),
         (0.25, 0.3, 2.25, 0.6, 12, 6, 0.85), (0.3, 0.3, 1.25, 0.65, 14, 12, 0.8)][s]
    layer = rng.normal(size=x.shape[:3], loc=c[0], scale=c[1])[..., None].astype(np.float32)
    layer = _clipped_zoom(layer, c[2])
    layer[layer < c[3]] = 0
    layer = np.floor(np.clip(layer, 0, 1) * 255) / 255.0  # the original round-trips through an 8-bit PNG
    layer = _motion(layer, c[4], c[5], rng.uniform(-135, -45, len(x)))
    grey = (x @ np.array([0.299, 0.587, 0.114], np.float32))[..., None]
    x = c[6] * x + (1 - c[6]) * np.maximum(x, grey * 1.5 + 0.5)
    return np.clip(x + layer + np.rot90(layer, k=2, axes=(1, 2)), 0, 1) * 255


def frost(x, s, rng, _):
    a, b = [(1, 0.2), (1, 0.3), (0.9, 0.4), (0.85, 0.4), (0.75, 0.45)][s]
    ice = _plasma(rng, len(x), 32, 1.5) ** 2  # approximation: no frost photographs here
    texture = (0.55 + 0.45 * ice[..., None] * np.array([0.85, 0.95, 1.0])) * 255  # pale blue-white
    return np.clip(a * x * 255 + b * texture, 0, 255)


def fog(x, s, rng, _):
    a, decay = [(.2, 3), (.5, 3), (0.75, 2.5), (1, 2), (1.5, 1.75)][s]
    max_val = x.max(axis=(1, 2, 3), keepdims=True)
    x = x + a * _plasma(rng, len(x), 32, decay)[..., None]
    return np.clip(x * max_val / (max_val + a), 0, 1) * 255


def brightness(x, s, rng, _):
    from skimage.color import hsv2rgb, rgb2hsv

    c = [.05, .1, .15, .2, .3][s]
    hsv = rgb2hsv(x)
    hsv[..., 2] = np.clip(hsv[..., 2] + c, 0, 1)
    return np.clip(hsv2rgb(hsv), 0, 1) * 255


def contrast(x, s, rng, _):
    c = [.75, .5, .4, .3, 0.15][s]
    means = x.mean(axis=(1, 2), keepdims=True)
    return np.clip((x - means) * c + means, 0, 1) * 255


def elastic_transform(x, s, rng, _):
    from scipy.ndimage import affine_transform, gaussian_filter, map_coordinates

    size = 32
    alpha, sigma, shift = [(size * 0, size * 0, size * 0.08), (size * 0.05, size * 0.2, size * 0.07),
                           (size * 0.08, size * 0.06, size * 0.06), (size * 0.1, size * 0.04, size * 0.05),
                           (size * 0.1, size * 0.03, size * 0.03)][s]
    centre, half = np.float32([size, size]) // 2, size // 3
    pts1 = np.float32([centre + half, [centre[0] + half, centre[1] - half], centre - half])
    yy, xx = np.meshgrid(np.arange(size), np.arange(size), indexing="ij")
    out = np.empty_like(x)
    for i in range(len(x)):
        pts2 = pts1 + rng.uniform(-shift, shift, size=pts1.shape).astype(np.float32)
        # affine M with M @ [p1, 1] = p2 (points are (x, y)); scipy maps output -> input: invert it
        A = np.linalg.solve(np.c_[pts1, np.ones(3)], pts2).T  # [2, 3]
        inv = np.linalg.inv(np.r_[A, [[0, 0, 1]]])
        mat = np.array([[inv[1, 1], inv[1, 0], inv[1, 2]], [inv[0, 1], inv[0, 0], inv[0, 2]]])  # (y, x) order
        img = np.stack([affine_transform(x[i, ..., ch], mat[:, :2], offset=mat[:, 2], order=1, mode="mirror")
                        for ch in range(3)], -1)
        dx = gaussian_filter(rng.uniform(-1, 1, (size, size)), sigma, mode="reflect", truncate=3) * alpha
        dy = gaussian_filter(rng.uniform(-1, 1, (size, size)), sigma, mode="reflect", truncate=3) * alpha
        out[i] = np.stack([map_coordinates(img[..., ch], [yy + dy, xx + dx], order=1, mode="reflect")
                           for ch in range(3)], -1)
    return np.clip(out, 0, 1) * 255


def pixelate(x, s, rng, images):
    from PIL import Image

    c = [0.95, 0.9, 0.85, 0.75, 0.65][s]
    small = int(32 * c)
    return _pil_each(images, lambda im: im.resize((small, small), Image.BOX).resize((32, 32), Image.BOX))


def jpeg_compression(x, s, rng, images):
    import io

    from PIL import Image

    q = [80, 65, 58, 50, 40][s]

    def roundtrip(im):
        buf = io.BytesIO()
        im.save(buf, "JPEG", quality=q)
        return Image.open(buf).convert("RGB")

    return _pil_each(images, roundtrip)


_FUNCS = {name: globals()[name] for name in CORRUPTIONS}
