"""Images/s of the per-image augmentation path vs the batched one, per policy (batched: the default where it exists).

    python -m benchmarks.bench_augment [--threads 1] [--batch 256] [--reps 5] [--device cpu|cuda]

Both paths run side by side in one process on the same batch and the same per-sample generators
(fresh ones each repetition, built outside the timed region: the data loader builds them either way),
alternating per repetition so they share the machine's state; images/s is batch / mean time. With
--threads 1 (the default) that is images/s per CPU core. --device cuda moves only the batched path's
images to the GPU (draws stay on the CPU, as in training); the per-image path is the CPU reference.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from baselines import create_method

POLICIES = ("rand-m9-n2", "autoaug-cifar10", "autoaug-imagenet", "trivialaug")
GOAL = 10.0


def images(n: int, c: int, size: int, seed: int = 0) -> torch.Tensor:
    # Smooth random images (as in the tests): pure noise makes histogram ops unrepresentative.
    g = torch.Generator().manual_seed(seed)
    base = torch.randint(0, 256, (n, c, max(size // 4, 1), max(size // 4, 1)), generator=g).float()
    big = torch.nn.functional.interpolate(base, size=(size, size), mode="bilinear", align_corners=False)
    return big.round().clamp(0, 255).to(torch.uint8)


def generators(n: int, rep: int) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(rep * 1_000_003 + i) for i in range(n)]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def measure(policy: str, c: int, size: int, args) -> tuple[float, float]:
    up = create_method(policy)
    device = torch.device(args.device)
    x = images(args.batch, c, size)
    xd = x.to(device)
    # Warm-up, as after the first batches of training: the batched path's per-(op, magnitude, size)
    # source maps (TrivialAugment has ~300 of them), lazy init, the CUDA context.
    for rep in range(1, 5):
        up.batch_sample_transform(xd, generators(args.batch, -rep))
    per_image, batched = [], []
    for rep in range(args.reps):
        gens = generators(args.batch, rep)
        t0 = time.perf_counter()
        for img, g in zip(x, gens):
            up.sample_transform(img, g)
        per_image.append(time.perf_counter() - t0)
        gens = generators(args.batch, rep)
        sync(device)
        t0 = time.perf_counter()
        up.batch_sample_transform(xd, gens)
        sync(device)
        batched.append(time.perf_counter() - t0)
    return args.batch / statistics.mean(per_image), args.batch / statistics.mean(batched)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--policies", nargs="+", default=list(POLICIES))
    ap.add_argument("--sizes", nargs="+", type=int, default=[28, 32])
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"threads={args.threads} batch={args.batch} reps={args.reps} device={args.device} torch={torch.__version__}")
    print(f"{'policy':<18}{'px':>4}{'C':>3}{'per-image img/s':>17}{'batched img/s':>15}{'ratio':>8}  goal>={GOAL:g}x")
    for policy in args.policies:
        for size in args.sizes:
            for c in (1, 3):
                slow, fast = measure(policy, c, size, args)
                ratio = fast / slow
                print(f"{policy:<18}{size:>4}{c:>3}{slow:>17,.0f}{fast:>15,.0f}{ratio:>8.1f}  "
                      f"{'met' if ratio >= GOAL else 'NOT met'}", flush=True)


if __name__ == "__main__":
    main()
