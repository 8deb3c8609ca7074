"""CLIP fine-tuning tasks: `clip/<image task>` wraps any registered single-label image task (MedMNIST,
digits, natural/*, office31, ood/* pairs, ...) with an open_clip model whose classifier head is the
text tower applied to class prompts.

    clip/medmnist/breastmnist     the inner task's data, splits, metrics and OOD test sets, unchanged
    model.features(x)             L2-normalised image embedding h
    model.head(h)                 s * h T^T, T = normalised class-prompt embeddings (templates averaged,
                                  as open_clip's zero-shot classifier), s = exp(logit_scale) <= 100

Task options (`--set task.<name>=value`, part of the run key): `arch` (open_clip model name) and
`pretrained` (open_clip tag, or none = random init), `objective` (flyp | ce), `wise_alpha` (WiSE-FT at
evaluation), `grad_checkpointing`; plus the inner task's own options.

Weights are never downloaded at run time. A tag is looked up in the Hugging Face cache and in
open_clip's URL cache (~/.cache/clip, or $SAFLEX_CLIP_CACHE for both); a local file given by the
execution setting SAFLEX_CLIP_CHECKPOINT (a file, or a folder holding `<arch>/<pretrained>.<ext>`)
takes precedence. The path is not part of the run key; its sha256 is recorded in TaskData.info
and printed on stderr. See docs/clip.md.

Training objective (objective=flyp, FLYP, Goyal et al. 2023): the symmetric contrastive loss between
the batch's images and their captions, a caption being the class prompt of the image's label (a
mixture of class prompts for mixed labels). Because an embedding's logits are linear in the caption
embedding, the [B, B] image-caption logit matrix is `logits @ targets^T`: the trainer's plain path
(class logits + task.loss) trains text tower, image tower and logit scale together. A batch repeats
class prompts; captions of the image's class count as positives in both directions (supervised-
contrastive style). Image->caption this changes nothing but a constant (repeated captions are
identical columns, so the gradient is FLYP's); caption->image it stops FLYP's plain CLIP loss from
pushing a caption away from the other images of its class. Evaluation losses (no graph) are the
image->class-prompt cross-entropy.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import importlib.util
import os
import sys
from pathlib import Path
from typing import Any, Literal, Optional

from pydantic import Field, field_validator

from bench.config import Knobs
from bench.errors import UsageError
from bench.tasks import get_task, list_tasks, register_task
from bench.tasks.base import Task, TaskData

CHECKPOINT_ENV = "SAFLEX_CLIP_CHECKPOINT"  # execution setting: a local weights file or folder (not in the key)
CACHE_ENV = "SAFLEX_CLIP_CACHE"            # optional cache_dir for both the HF and open_clip URL caches
WEIGHT_EXTS = (".safetensors", ".bin", ".pt", ".pth")

# Small random-init architectures for CPU tests and the CPU sweep (open_clip CLIP configs). The vocab
# must be the bundled BPE tokenizer's.
TINY_ARCHS: dict[str, dict] = {
    "tiny-vit": dict(
        embed_dim=32,
        vision_cfg=dict(image_size=32, layers=2, width=32, head_width=16, patch_size=8, mlp_ratio=2.0),
        text_cfg=dict(context_length=24, vocab_size=49408, width=32, heads=2, layers=2, mlp_ratio=2.0),
    ),
}

GENERIC_TEMPLATES = ("a photo of a {c}.",)
# Class-prompt templates and class names live with the dataset: keyed by the inner task name, then by
# its family; fallback GENERIC_TEMPLATES and the task's own class names.
TEMPLATES: dict[str, tuple[str, ...]] = {
    "digits/sklearn": ("a photo of the number {c}.", "a low resolution photo of the digit {c}.",
                       "a handwritten digit {c}.", "a blurry photo of the number {c}."),
    "medmnist/breastmnist": ("a breast ultrasound image showing {c}.", "an ultrasound scan of {c} breast tissue.",
                             "a medical image of a {c} breast lesion."),
    "medmnist/pneumoniamnist": ("a chest x-ray showing {c}.", "a pediatric chest radiograph: {c}.",
                                "a medical image of lungs with {c}."),
    "medmnist/retinamnist": ("a fundus photograph with {c}.", "a retina image showing {c}.",
                             "a medical image of an eye with {c}."),
    "medmnist": ("a medical image of {c}.", "a low resolution medical scan showing {c}.", "a photo of {c}."),
    "natural": ("a photo of a {c}.", "a blurry photo of a {c}.", "a low resolution photo of the {c}.",
                "a photo of the small {c}.", "a photo of the big {c}."),
    "office31": ("a photo of a {c}.", "a product photo of a {c}.", "a webcam photo of a {c}."),
}
_DIGITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
CLASSNAMES: dict[str, tuple[str, ...]] = {
    "digits/sklearn": _DIGITS,
    "medmnist/breastmnist": ("malignant tissue", "normal or benign tissue"),
    "medmnist/pneumoniamnist": ("no pneumonia (normal lungs)", "pneumonia"),
    "medmnist/retinamnist": ("no diabetic retinopathy", "mild diabetic retinopathy", "moderate diabetic retinopathy",
                             "severe diabetic retinopathy", "proliferative diabetic retinopathy"),
    "natural/cifar10": ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"),
}


def templates_for(inner: str) -> tuple[str, ...]:
    return TEMPLATES.get(inner) or TEMPLATES.get(inner.split("/", 1)[0]) or GENERIC_TEMPLATES


def classnames_for(task: Task, inner: str) -> list[str]:
    """Class names: this module's dict, else the task's `class_names`/`classes`, else MedMNIST's INFO
    labels, else the class index."""
    if inner in CLASSNAMES:
        return list(CLASSNAMES[inner])
    for attr in ("class_names", "classes"):
        names = getattr(task, attr, None)
        if names is not None and len(names) == task.num_classes:
            return [str(n).replace("_", " ") for n in names]
    if inner.startswith("medmnist/"):
        from bench.tasks.medmnist import _info

        labels = _info()[inner.split("/", 1)[1]]["label"]
        return [labels[str(i)] for i in range(task.num_classes)]
    return [str(i) for i in range(task.num_classes)]


# ---- options ---------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=1)
def _open_clip_archs() -> tuple[str, ...]:
    """open_clip's bundled model config names, read without importing open_clip (which imports torch)."""
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        return ()
    folder = Path(list(spec.submodule_search_locations)[0]) / "model_configs"
    return tuple(sorted(p.stem for p in folder.glob("*.json")))


class ClipOptions(Knobs):
    arch: str = "ViT-B-32"
    pretrained: Optional[str] = "laion2b_s34b_b79k"  # open_clip tag; none = random init
    objective: Literal["flyp", "ce"] = "flyp"          # training loss: FLYP symmetric contrastive, or CE over prompts
    wise_alpha: float = Field(1.0, ge=0.0, le=1.0)     # evaluate (1-a) * zero-shot + a * fine-tuned weights
    grad_checkpointing: bool = False

    @field_validator("pretrained", mode="before")
    @classmethod
    def _none_words(cls, v):
        return None if isinstance(v, str) and v.strip().lower() in ("", "none", "null") else v

    @field_validator("arch")
    @classmethod
    def _known_arch(cls, v):
        valid = (*TINY_ARCHS, *_open_clip_archs())
        if v not in valid:
            raise ValueError(f"unknown open_clip architecture {v!r} (valid: {', '.join(valid)})")
        return v


CLIP_OPTION_NAMES = tuple(ClipOptions.model_fields)


# ---- weights ---------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Weights:
    path: str | None           # None: random init
    source: str                # "random" | "checkpoint" | "cache"
    sha256: str | None = None

    def info(self) -> dict:
        return dataclasses.asdict(self)


@functools.lru_cache(maxsize=8)
def _sha256(path: str, size: int, mtime: float) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 24), b""):
            h.update(chunk)
    return h.hexdigest()


def file_sha256(path: str) -> str:
    st = os.stat(path)
    return _sha256(os.path.realpath(path), st.st_size, st.st_mtime)


def _checkpoint_from_env(arch: str, pretrained: str | None) -> str | None:
    value = os.environ.get(CHECKPOINT_ENV)
    if not value:
        return None
    p = Path(value).expanduser()
    if p.is_file():
        return os.fspath(p)
    if p.is_dir():
        stem = p / arch / (pretrained or "random")
        for ext in WEIGHT_EXTS:
            if stem.with_suffix(ext).is_file():
                return os.fspath(stem.with_suffix(ext))
        raise UsageError(f"{CHECKPOINT_ENV}={value} is a folder without {stem}{{{','.join(WEIGHT_EXTS)}}} "
                         f"(expected <folder>/<arch>/<pretrained>.<ext>)")
    raise UsageError(f"{CHECKPOINT_ENV}={value} is neither a file nor a folder")


def _cached_tag_file(arch: str, tag: str) -> tuple[str | None, list[str]]:
    """(path of the cached weights of an open_clip tag or None, the places looked in)."""
    import open_clip
    from open_clip.constants import HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME

    cfg = open_clip.get_pretrained_cfg(arch, tag)
    cache_dir = os.environ.get(CACHE_ENV) or None
    looked: list[str] = []
    if cfg.get("hf_hub"):
        from huggingface_hub import try_to_load_from_cache
        from huggingface_hub.constants import HF_HUB_CACHE

        model_id, filename = os.path.split(cfg["hf_hub"])
        names = [filename] if filename else [HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME]
        if filename.endswith((".bin", ".pth")):
            names.insert(0, filename[:-4] + ".safetensors")
        for name in names:
            hit = try_to_load_from_cache(model_id, name, cache_dir=cache_dir)
            if isinstance(hit, str) and os.path.isfile(hit):
                return hit, looked
        looked.append(f"Hugging Face cache {cache_dir or HF_HUB_CACHE} (repo {model_id}, {' or '.join(names)})")
    if cfg.get("url"):
        folder = cache_dir or os.path.expanduser("~/.cache/clip")
        target = os.path.join(folder, os.path.basename(cfg["url"]))
        if os.path.isfile(target):
            return target, looked
        looked.append(f"open_clip cache {target}")
    return None, looked


def resolve_weights(arch: str, pretrained: str | None) -> Weights:
    """Where the run's initial weights come from; UsageError (one line) when they are not here."""
    ckpt = _checkpoint_from_env(arch, pretrained)
    if ckpt is not None:
        return Weights(ckpt, "checkpoint", file_sha256(ckpt))
    if pretrained is None:
        return Weights(None, "random")
    if arch in TINY_ARCHS:
        raise UsageError(f"architecture {arch} has no pretrained tags (set task.pretrained=none, or point "
                         f"{CHECKPOINT_ENV} at a local checkpoint)")
    import open_clip

    tags = open_clip.list_pretrained_tags_by_model(arch)
    if not open_clip.get_pretrained_cfg(arch, pretrained):
        raise UsageError(f"unknown pretrained tag '{pretrained}' for {arch} (valid: {', '.join(tags) or 'none'}; "
                         f"or a local file via {CHECKPOINT_ENV})")
    path, looked = _cached_tag_file(arch, pretrained)
    if path is None:
        raise UsageError(
            f"pretrained weights {arch}/{pretrained} are not cached and runs download nothing: looked in "
            f"{'; '.join(looked)}; fetch them once with python -c \"import open_clip; open_clip.create_model("
            f"'{arch}', pretrained='{pretrained}')\" (HF_HOME / {CACHE_ENV} choose the cache) or set "
            f"{CHECKPOINT_ENV}=/path/to/weights (a file, or a folder with {arch}/{pretrained}.safetensors)")
    return Weights(path, "cache", file_sha256(path))


def preprocess_cfg(arch: str, pretrained: str | None) -> dict:
    """open_clip's eval preprocessing for the model: size, mean/std, interpolation, resize mode."""
    import open_clip
    from open_clip.transform import PreprocessCfg, merge_preprocess_dict

    if arch in TINY_ARCHS:
        size = TINY_ARCHS[arch]["vision_cfg"]["image_size"]
    else:
        size = open_clip.get_model_config(arch)["vision_cfg"]["image_size"]
    cfg = merge_preprocess_dict(PreprocessCfg(size=size), open_clip.get_pretrained_cfg(arch, pretrained) if pretrained else {})
    return cfg


def create_clip(arch: str, weights: Weights):
    """The open_clip CLIP model (fp32, CPU) with its tokenizer."""
    import open_clip

    if arch in TINY_ARCHS:
        cfg = TINY_ARCHS[arch]
        model = open_clip.CLIP(**cfg)
        tokenizer = open_clip.tokenizer.SimpleTokenizer(context_length=cfg["text_cfg"]["context_length"])
        if weights.path is not None:
            open_clip.load_checkpoint(model, weights.path)
        return model, tokenizer
    model = open_clip.create_model(arch, pretrained=weights.path)  # a file path: open_clip loads it strictly
    return model, open_clip.get_tokenizer(arch)


# ---- the model -------------------------------------------------------------------------------------
def _text_params(clip):
    return [p for n, p in clip.named_parameters() if not n.startswith("visual.")]


def _build_classes():
    import torch
    import torch.nn.functional as F
    from torch import nn

    class PromptHead(nn.Module):
        """logits = s * h T^T with T the class-prompt embeddings of the owner's (current) text tower.
        Not a linear layer with its own weight: T is recomputed when the text weights changed
        (once per training step) and cached while they do not (evaluation batches)."""

        bias = None  # no bias: SAFLEX's reference summary must use g = 0

        def __init__(self, owner):
            super().__init__()
            self.__dict__["_owner"] = owner  # not a submodule: the owner holds the parameters

        def forward(self, h: torch.Tensor) -> torch.Tensor:
            owner = self.__dict__["_owner"]
            return owner.logit_scale() * h @ owner.class_embeddings().t().to(h.dtype)

    class ClipClassifier(nn.Module):
        def __init__(self, clip, prompt_tokens: torch.Tensor, num_templates: int, wise_alpha: float = 1.0,
                     weights: Weights | None = None):
            super().__init__()
            self.clip = clip
            self.register_buffer("prompt_tokens", prompt_tokens, persistent=False)
            self.num_templates = num_templates
            self.head = PromptHead(self)
            self.wise_alpha = wise_alpha
            self.weights_info = weights.info() if weights is not None else None
            self._text_cache: tuple | None = None
            # WiSE-FT: the zero-shot weights, kept off the state dict (rebuilt with the model on resume)
            self._zeroshot = ({k: v.detach().clone() for k, v in clip.state_dict().items()}
                              if wise_alpha < 1.0 else None)
            self._wise: tuple | None = None

        # -- text side ---------------------------------------------------------------------
        def logit_scale(self) -> torch.Tensor:
            return self.clip.logit_scale.exp().clamp(max=100.0)

        def _encode_classes(self, clip) -> torch.Tensor:
            emb = clip.encode_text(self.prompt_tokens, normalize=True)
            emb = emb.reshape(-1, self.num_templates, emb.shape[-1]).mean(1)
            return F.normalize(emb, dim=-1)

        def class_embeddings(self, clip=None) -> torch.Tensor:
            """[C, d] normalised class embeddings (templates averaged). With grad: computed per call (one
            call per step); without: cached until a text parameter changes (in place) or autocast flips."""
            clip = clip if clip is not None else self.clip
            if torch.is_grad_enabled():
                return self._encode_classes(clip)
            params = _text_params(clip)
            key = (id(clip), torch.is_autocast_enabled("cuda") if self.prompt_tokens.is_cuda else False,
                   tuple(id(p) for p in params), tuple(p._version for p in params))
            if self._text_cache is None or self._text_cache[0] != key:
                self._text_cache = (key, self._encode_classes(clip))
            return self._text_cache[1]

        # -- image side --------------------------------------------------------------------
        def features(self, x: torch.Tensor) -> torch.Tensor:
            return F.normalize(self.clip.encode_image(x), dim=-1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if not self.training and self._zeroshot is not None:
                return self._wise_forward(x)
            return self.head(self.features(x))

        # -- WiSE-FT ------------------------------------------------------------------------
        @torch.no_grad()
        def wise_model(self):
            """A copy of the CLIP model holding (1 - a) * zero-shot + a * current weights; rebuilt when
            the current weights changed."""
            import copy

            params = list(self.clip.parameters())
            key = tuple(p._version for p in params)
            if self._wise is None or self._wise[0] != key:
                model = self._wise[1] if self._wise is not None else copy.deepcopy(self.clip)
                a = self.wise_alpha
                current = self.clip.state_dict()
                mixed = {k: (1 - a) * self._zeroshot[k].to(v.device, v.dtype) + a * v if v.is_floating_point() else v
                         for k, v in current.items()}
                model.load_state_dict(mixed)
                model.eval()
                self._wise = (key, model)
            return self._wise[1]

        def _wise_forward(self, x: torch.Tensor) -> torch.Tensor:
            model = self.wise_model()
            h = F.normalize(model.encode_image(x), dim=-1)
            scale = model.logit_scale.exp().clamp(max=100.0)
            return scale * h @ self.class_embeddings(model).t().to(h.dtype)

    return PromptHead, ClipClassifier


@functools.lru_cache(maxsize=1)
def model_classes():
    return _build_classes()


# ---- losses ----------------------------------------------------------------------------------------
def flyp_loss(logits, targets, w=None):
    """Symmetric image<->caption contrastive loss of a batch, from class logits.

    flyp_loss(logits [B, C] = s h T^T, targets [B, C] (caption i = targets_i-mixture of class prompts),
              w [B] per-image weights or None) -> scalar
    The image-caption logit matrix is M = logits @ targets^T (logits are linear in the caption
    embedding). Positives of image i are the captions j with overlap targets_i . targets_j > 0
    (distribution P_ij proportional to it), in both directions; w_i weights image i's row term and the
    column term of its caption, as saflex_core.contrastive.weighted_clip_loss (equal to it when the
    batch's labels are distinct one-hot rows).
    """
    import torch

    t = targets.to(logits.dtype)
    m = logits @ t.t()
    overlap = t @ t.t()
    p_rows = overlap / overlap.sum(1, keepdim=True).clamp_min(1e-12)
    p_cols = overlap.t() / overlap.t().sum(1, keepdim=True).clamp_min(1e-12)
    i2t = -(p_rows * torch.log_softmax(m, 1)).sum(1)
    t2i = -(p_cols * torch.log_softmax(m.t(), 1)).sum(1)
    if w is not None:
        wd = w.detach().to(i2t.dtype)
        i2t, t2i = i2t * wd, t2i * wd
    return 0.5 * (i2t.mean() + t2i.mean())


def saflex_adapter_class():
    """saflex_core.Saflex for the prompt head: no bias (g = 0, as saflex_core.contrastive's summary),
    and the SAFLEX-weighted FLYP loss with captions built from the soft labels q."""
    import saflex_core

    class ClipSaflex(saflex_core.Saflex):
        def __init__(self, cfg, objective: str = "flyp"):
            super().__init__(cfg, bias=False)
            self.objective = objective

        def loss(self, logits, y, h, clean_logits=None, clean_y=None):
            w, q, stats = self.reweight(h, logits, y)
            if self.objective == "flyp":
                loss = flyp_loss(logits, q, w)
            else:
                loss = saflex_core.weighted_soft_cross_entropy(logits, q, w)
            if self.cfg.clean_weight > 0 and clean_logits is not None and clean_y is not None:
                clean = flyp_loss(clean_logits, clean_y) if self.objective == "flyp" else \
                    saflex_core.weighted_soft_cross_entropy(clean_logits, clean_y)
                loss = loss + self.cfg.clean_weight * clean
            return loss, w, q, stats

    return ClipSaflex


# ---- the task --------------------------------------------------------------------------------------
class ClipTask(Task):
    """`clip/<inner>`: the inner image task's data and metrics; an open_clip model; FLYP fine-tuning."""

    modality = "image"
    zero_shot = True  # the model as built is a classifier (the `zeroshot` learner evaluates it)

    def __init__(self, inner: str):
        if inner.startswith("clip/"):
            raise UsageError(f"clip/{inner}: nested clip tasks make no sense")
        self.inner = get_task(inner)
        if self.inner.modality != "image":
            raise UsageError(f"clip/{inner}: CLIP needs an image task ({inner} is {self.inner.modality})")
        if self.inner.multi_label:
            raise UsageError(f"clip/{inner}: class-prompt CLIP here is single-label ({inner} is {self.inner.task_type})")
        self.inner_name = inner
        self.name = f"clip/{inner}"
        self.task_type = self.inner.task_type
        self.num_classes = self.inner.num_classes
        self.metric_names = self.inner.metric_names
        self.description = f"open_clip fine-tuning (FLYP) on {inner}"
        inner_opts = getattr(self.inner, "Options", None)
        if inner_opts is not None:
            clash = set(inner_opts.model_fields) & set(CLIP_OPTION_NAMES)
            if clash:
                raise ValueError(f"{inner} options {sorted(clash)} clash with the clip options")
            from pydantic import create_model

            self.Options = create_model(f"ClipOptions_{inner.replace('/', '_')}", __base__=(ClipOptions, inner_opts))
        else:
            self.Options = ClipOptions
        self.classnames = classnames_for(self.inner, inner)
        self.templates = templates_for(inner)
        self._configured: dict | None = None  # options of the run being set up (prepare/loss need them)

    # -- identity / defaults ----------------------------------------------------------------------
    def defaults(self) -> dict[str, Any]:
        # FLYP's recipe (AdamW 1e-5, wd 0.1, cosine, 10 epochs); batch 256 fits ViT-B-32 bf16 on one GPU
        select = self.inner.defaults().get("select_metric", self.metric_names[0])
        return dict(model="open_clip", epochs=10, batch_size=256, lr=1e-5, optimizer="adamw", weight_decay=0.1,
                    schedule="cosine", select_metric=select)

    def models(self):
        return ["open_clip"]

    def options_of(self, spec: Any) -> ClipOptions:
        return self.Options.model_validate(dict(getattr(spec, "options", None) or {}))

    def inner_spec(self, spec: Any):
        """The run spec as the inner task sees it: its own name and only its own options."""
        if spec is None or not dataclasses.is_dataclass(spec):
            return spec
        opts = {k: v for k, v in (spec.options or {}).items() if k not in CLIP_OPTION_NAMES}
        return dataclasses.replace(spec, task=self.inner_name, options=opts or None)

    def configure(self, spec: Any) -> ClipOptions:
        opts = self.options_of(spec)
        self._configured = dict(opts=opts, pre=preprocess_cfg(opts.arch, opts.pretrained))
        return opts

    # -- data ---------------------------------------------------------------------------------------
    def check_data(self, data_root):
        return self.inner.check_data(data_root)

    def load(self, data_root, spec: Any = None) -> TaskData:
        opts = self.options_of(spec)
        weights = resolve_weights(opts.arch, opts.pretrained)  # before anything is written
        data = self.inner.load(data_root, self.inner_spec(spec))
        self.configure(spec)
        if weights.path is not None:
            print(f"clip weights {opts.arch}/{opts.pretrained}: {weights.path} sha256 {weights.sha256}", file=sys.stderr)
        info = {**data.info, "clip_weights": weights.info()}
        return TaskData(data.train, data.select, data.tests, data.reference, info)

    def prepare(self, x):
        """uint8 [B, C, H, W] -> open_clip's eval transform: RGB, resize (bicubic, shortest side), centre
        crop, normalise with the model's mean/std."""
        import torch
        from torchvision.transforms import InterpolationMode
        from torchvision.transforms.v2 import functional as TF

        if self._configured is None:
            raise RuntimeError(f"{self.name}: prepare() before load()/build_model() set the model's preprocessing")
        pre = self._configured["pre"]
        single = x.ndim == 3
        x = x[None] if single else x
        x = x.float() / 255.0
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        size = pre["size"] if isinstance(pre["size"], (tuple, list)) else (pre["size"], pre["size"])
        mode = InterpolationMode.BILINEAR if pre["interpolation"] == "bilinear" else InterpolationMode.BICUBIC
        if tuple(x.shape[-2:]) != tuple(size):
            if pre["resize_mode"] == "squash":
                x = TF.resize(x, list(size), interpolation=mode, antialias=True)
            else:
                h, w = x.shape[-2:]
                fit = min if pre["resize_mode"] == "shortest" else max
                scale = fit(size[0] / h, size[1] / w)
                x = TF.resize(x, [max(1, round(h * scale)), max(1, round(w * scale))], interpolation=mode, antialias=True)
                x = TF.center_crop(x, list(size))  # pads with 0 when 'longest' leaves a border
            x = x.clamp(0.0, 1.0)  # bicubic overshoots; PIL's uint8 pipeline clips too
        mean = torch.tensor(pre["mean"], dtype=x.dtype).view(1, -1, 1, 1)
        std = torch.tensor(pre["std"], dtype=x.dtype).view(1, -1, 1, 1)
        x = (x - mean) / std
        return x[0] if single else x

    # -- model ----------------------------------------------------------------------------------------
    def tokenized_prompts(self, tokenizer):
        texts = [t.format(c=c) for c in self.classnames for t in self.templates]
        return tokenizer(texts)

    def build_model(self, spec: Any):
        opts = self.configure(spec)
        weights = resolve_weights(opts.arch, opts.pretrained)
        clip, tokenizer = create_clip(opts.arch, weights)
        if opts.grad_checkpointing:
            clip.set_grad_checkpointing(True)
        _, ClipClassifier = model_classes()
        return ClipClassifier(clip, self.tokenized_prompts(tokenizer), len(self.templates),
                              wise_alpha=opts.wise_alpha, weights=weights)

    # -- loss, metrics ----------------------------------------------------------------------------------
    def objective(self) -> str:
        return self._configured["opts"].objective if self._configured else "flyp"

    def targets(self, y):
        return self.inner.targets(y)

    def loss(self, logits, targets):
        """Training batches (logits with a graph): FLYP's symmetric loss (objective=flyp) or CE over the
        class prompts; evaluation: CE over the class prompts."""
        if logits.requires_grad and self.objective() == "flyp":
            return flyp_loss(logits, targets)
        return self.inner.loss(logits, targets)

    def scores(self, logits):
        return self.inner.scores(logits)

    def metrics(self, logits, y):
        return self.inner.metrics(logits, y)

    def check_method(self, upstream) -> None:
        self.inner.check_method(upstream)

    def check_learner(self, learner: str) -> None:
        if learner == "saflex" and not getattr(_saflex_learner(), "uses_task_adapter", False):
            raise UsageError(f"on {self.name} use the learner saflex-clip (SAFLEX's contrastive variant): the "
                             f"plain saflex learner assumes a linear head with a bias")
        self.inner.check_learner(learner)

    def saflex_adapter(self, cfg):
        """What a SAFLEX learner should use on this task instead of saflex_core.Saflex(cfg)."""
        return saflex_adapter_class()(cfg, self.objective())


def _saflex_learner():
    from bench.learners.base import get_learner_class

    return get_learner_class("saflex")


# ---- registration ------------------------------------------------------------------------------------
_LISTING = [False]


def _list_clip_tasks() -> list[str]:
    """`clip/<name>` for every registered single-label image task (the registry lists itself while we
    list: the flag stops the recursion)."""
    if _LISTING[0]:
        return []
    _LISTING[0] = True
    try:
        out = []
        for name in list_tasks():
            if name.startswith("clip/"):
                continue
            try:
                t = get_task(name)
            except UsageError:
                continue
            if t.modality == "image" and not t.multi_label:
                out.append(f"clip/{name}")
        return out
    finally:
        _LISTING[0] = False


register_task("clip/<image task>", lambda inner: ClipTask(inner), pattern=r"clip/(?P<inner>.+)",
              examples=["clip/medmnist/breastmnist", "clip/digits/sklearn"], lister=_list_clip_tasks)
