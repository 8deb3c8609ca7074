"""Few-shot image classification: `fewshot/<dataset>-k<K>`, dataset in cifar10, tinyimagenet,
office31 (the amazon domain), K in 1, 2, 4, 8, 16 labelled images per class.

Data (the same files as natural/* and ood/amazon-to-webcam, see those modules for the paths looked in):
  train  K images per class drawn from the training pool with `draw_seed` (default: the run seed, so
         every seed is a different draw, and every method with that seed sees the same one);
  val    K further images per class drawn the same way, disjoint from train (the selection split);
  test   the dataset's full test set (CIFAR-10: 10k; Tiny-ImageNet: the official val set, or the
         seeded 10/class of the shared file, see natural.py); office31: every amazon image not drawn.
Sizes: CIFAR-10 32 px, Tiny-ImageNet 64 px, Office-31 resized to `image_size` (default 64, PIL bilinear).

Two regimes (task option `regime`):
  scratch  the run's model (small_cnn or resnet18, bench.models) trained from random init;
  linear   a frozen torchvision backbone named by the run field `model` (resnet18/34/50) with the
           ImageNet weights named by the option `weights` (e.g. IMAGENET1K_V1, torchvision's weights
           API; read from the torch hub cache only, never downloaded; `weights=null` = random init)
           and a trained linear head. Inputs are re-normalised from the dataset's statistics to
           ImageNet's inside the model; the backbone stays in eval mode (BatchNorm statistics frozen).

With a frozen backbone SAFLEX's last-layer approximation is exact: the trainable parameters are
exactly the head (W, b), so the SAFLEX score u_i = G h_i + g (saflex_core.sample_scores) paired with
(p_i - y) is the inner product of the sample's loss gradient with the reference loss gradient over
every trainable parameter, <d l_i/d theta, d L_ref/d theta> = (p_i - y_i) . u_i, with no term lost
from the layers below (tests/unit/bench/tasks/test_fewshot.py checks it against autograd).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Optional

from pydantic import Field, field_validator

from bench.config import Knobs
from bench.errors import UsageError
from bench.tasks import register_task
from bench.tasks.base import ImageTask, Split, TaskData, as_tensor

DATASETS = ("cifar10", "tinyimagenet", "office31")
SHOTS = (1, 2, 4, 8, 16)
NUM_CLASSES = {"cifar10": 10, "tinyimagenet": 200, "office31": 31}
SCRATCH_MODELS = ("small_cnn", "resnet18")
BACKBONES = ("resnet18", "resnet34", "resnet50")
IMAGENET_STATS = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
# measured on the 1000 shared amazon images at 64 px (white product backgrounds: bright, high variance)
OFFICE31_STATS = ((0.7926, 0.7856, 0.7839), (0.3047, 0.3084, 0.3103))


class FewShotOptions(Knobs):
    regime: Literal["scratch", "linear"] = Field("scratch", description="scratch: train the model; linear: frozen backbone + linear head")
    weights: Optional[str] = Field("IMAGENET1K_V1", description="torchvision weights of the linear regime's backbone (null: random init)")
    draw_seed: Optional[int] = Field(None, ge=0, description="seed of the K-shot draws (null: the run seed)")
    image_size: int = Field(64, ge=8, le=512, description="office31: images resized to this many pixels")
    test_per_class: Optional[int] = Field(None, ge=1, description="seeded per-class subset of the test set (CPU runs)")

    @field_validator("weights", mode="before")
    @classmethod
    def _null_words(cls, v):  # `--set task.weights=none` from the CLI
        return None if isinstance(v, str) and v.strip().lower() in ("", "none", "null") else v


class FrozenBackbone:
    """Namespace for the linear regime's model (built lazily: torch is imported inside)."""

    @staticmethod
    def build(backbone: str, weights: str | None, num_classes: int, mean, std):
        import torch
        from torch import nn

        net = _torchvision_backbone(backbone, weights)
        feat_dim = net.fc.in_features
        net.fc = nn.Identity()
        for p in net.parameters():
            p.requires_grad_(False)

        class Linear(nn.Module):
            def __init__(self):
                super().__init__()
                self.body = net.eval()
                self.head = nn.Linear(feat_dim, num_classes)
                # dataset-normalised input -> ImageNet-normalised input, one affine map per channel
                m, s = torch.tensor(mean).view(1, -1, 1, 1), torch.tensor(std).view(1, -1, 1, 1)
                im, ist = (torch.tensor(v).view(1, -1, 1, 1) for v in IMAGENET_STATS)
                self.register_buffer("scale", s / ist)
                self.register_buffer("shift", (m - im) / ist)

            def train(self, mode: bool = True):
                super().train(mode)
                self.body.eval()  # frozen: BatchNorm uses (and keeps) the pretrained statistics
                return self

            def features(self, x):
                with torch.no_grad():
                    return self.body(x * self.scale + self.shift)

            def forward(self, x):
                return self.head(self.features(x))

        return Linear()


def _torchvision_backbone(name: str, weights: str | None):
    from torchvision import models

    if weights is None:
        return models.get_model(name, weights=None)
    w = cached_weights(name, weights)
    net = models.get_model(name, weights=None)
    net.load_state_dict(w.get_state_dict(progress=False, check_hash=True))  # reads the cached file
    return net


def cached_weights(name: str, weights: str):
    """torchvision's weights enum entry, or a UsageError when unknown or not in the torch hub cache."""
    import os

    import torch
    from torchvision import models

    try:
        w = models.get_model_weights(name)[weights]
    except KeyError:
        valid = ", ".join(m.name for m in models.get_model_weights(name))
        raise UsageError(f"unknown weights '{weights}' for {name} (valid: {valid}, or null for random init)") from None
    cached = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(w.url)
    if not cached.is_file():
        raise UsageError(f"weights {name} {weights} are not cached at {cached} (bench never downloads; fetch once with "
                         f"python -c \"import torchvision; torchvision.models.{name}(weights='{weights}')\")")
    return w


class FewShotTask(ImageTask):
    Options = FewShotOptions
    task_type = "multi-class"
    in_channels = 3
    metric_names = ("acc", "auc")

    def __init__(self, dataset: str, k: str | int):
        from bench.tasks import natural

        self.dataset, self.k = dataset, int(k)
        self.name = f"fewshot/{dataset}-k{self.k}"
        self.num_classes = NUM_CLASSES[dataset]
        self.mean, self.std = natural.STATS[dataset] if dataset in natural.STATS else OFFICE31_STATS
        self.description = f"{self.k}-shot {dataset}: K/class train + K/class val drawn by the seed; full test set"

    def defaults(self) -> dict[str, Any]:
        return dict(model="small_cnn", optimizer="adam", lr=1e-3, schedule="cosine", epochs=100,
                    batch_size=32, select_metric="acc")

    def models(self):
        return tuple(dict.fromkeys(SCRATCH_MODELS + BACKBONES))

    def check_data(self, data_root: Path | None) -> str | None:
        from bench.tasks import natural
        from bench.tasks._imagefiles import office31_present

        if data_root is None:
            return f"task {self.name} needs a data root (--data-root DIR or $SAFLEX_DATA)"
        if self.dataset == "office31":
            return None if office31_present(data_root, "amazon") else f"missing Office-31 amazon data for task {self.name}"
        return None if natural.locate(Path(data_root), self.dataset) else natural.missing_message(Path(data_root), self.dataset, self.name)

    def _options(self, spec) -> FewShotOptions:
        opt = FewShotOptions(**((getattr(spec, "options", None) or {})))
        model = getattr(spec, "model", "small_cnn")
        if opt.regime == "scratch" and model not in SCRATCH_MODELS:
            raise UsageError(f"task {self.name}: regime scratch trains {', '.join(SCRATCH_MODELS)} (got model {model}); "
                             f"for a frozen {model} set task.regime=linear")
        if opt.regime == "linear" and model not in BACKBONES:
            raise UsageError(f"task {self.name}: regime linear needs a torchvision backbone as model "
                             f"({', '.join(BACKBONES)}; got {model})")
        return opt

    def load(self, data_root: Path | None, spec: Any = None) -> TaskData:
        import numpy as np

        from bench.tasks import natural
        from bench.tasks._imagefiles import per_class, read_office31, split_generator

        opt = self._options(spec)
        if opt.regime == "linear" and opt.weights is not None:
            cached_weights(spec.model, opt.weights)  # before anything is written
        seed = opt.draw_seed if opt.draw_seed is not None else int(getattr(spec, "seed", 0))
        if self.dataset == "office31":
            x, y, origin = read_office31(data_root, "amazon", opt.image_size, self.name)
            pools = natural.Pools.from_arrays(x, y, x, y, origin)
        else:
            pools = natural.read_pools(data_root, self.dataset, self.name)
        train_idx = per_class(pools.train_y, self.k, split_generator(seed, self.name, "train"))
        val_idx = per_class(pools.train_y, self.k, split_generator(seed, self.name, "val"), exclude=train_idx)
        if len(val_idx) < self.num_classes:
            raise UsageError(f"task {self.name}: the pool has too few images per class for {self.k} train + {self.k} val")
        if self.dataset == "office31":  # test = the amazon images not drawn
            test_idx = np.setdiff1d(np.arange(len(pools.test_y)), np.concatenate([train_idx, val_idx]))
            test_idx = test_idx[per_class(pools.test_y[test_idx], opt.test_per_class, split_generator(seed, self.name, "test"))]
        else:
            test_idx = per_class(pools.test_y, opt.test_per_class, split_generator(0, self.name, "test"))
        train = lambda i: Split(as_tensor(pools.train_images(i)), as_tensor(pools.train_y[i]))  # noqa: E731
        test = Split(as_tensor(pools.test_images(test_idx)), as_tensor(pools.test_y[test_idx]))
        return TaskData(train(train_idx), train(val_idx), {"test": test},
                        info=dict(origin=pools.origin, draw_seed=seed, k=self.k, regime=opt.regime,
                                  drawn=dict(train=train_idx, val=val_idx)))  # pool indices of the draw

    def build_model(self, spec: Any):
        opt = self._options(spec)
        if opt.regime == "linear":
            return FrozenBackbone.build(spec.model, opt.weights, self.num_classes, self.mean, self.std)
        return super().build_model(spec)

    def metrics(self, logits, y) -> dict[str, float]:
        from bench.tasks._imagefiles import accuracy_auc

        return accuracy_auc(self.scores(logits.float()).numpy(), y.numpy())


register_task("fewshot/<dataset>-k<K>", lambda dataset, k: FewShotTask(dataset, k),
              pattern=rf"fewshot/(?P<dataset>{'|'.join(DATASETS)})-k(?P<k>{'|'.join(map(str, SHOTS))})",
              examples=[f"fewshot/{d}-k{k}" for d in DATASETS for k in SHOTS],
              lister=lambda: [f"fewshot/{d}-k{k}" for d in DATASETS for k in SHOTS])
