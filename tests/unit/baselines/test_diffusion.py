"""Diffusion augmentation: the `diffusion(pP,ID)[+METHOD]` upstream, the generation cache (skip,
resume after a kill, corrupt file regenerated), a tiny random img2img pipeline on real MedMNIST images,
training with and without SAFLEX on the cache, the sweep's generate: section and the CLI."""
from __future__ import annotations

import hashlib
import textwrap

import numpy as np
import pytest
import torch

import baselines
from baselines.diffusion import CacheError, Diffusion, cache_dir, cache_state, image_key, load_variants
from bench.errors import UsageError
from bench.generate import GenerationSpec, generate, make_tiny_pipeline

pytest.importorskip("diffusers")

CID = "0123456789"


# ---- the policy string ------------------------------------------------------------------------
def test_grammar_composes_with_per_image_policies_and_learners():
    from bench.learners.base import split_method
    from bench.spec import canonical_method

    up = baselines.create_method(f"diffusion(p0.50,{CID})+rand-m9-n2")
    assert isinstance(up, Diffusion) and up.p == 0.5 and up.cache == CID and str(up.inner) == "rand-m9-n2"
    assert str(up) == f"diffusion(p0.5,{CID})+rand-m9-n2"
    assert str(baselines.create_method(f"diffusion(p1,{CID})+none")) == f"diffusion(p1.0,{CID})"
    assert split_method(f"diffusion(p0.5,{CID})+rand-m9-n2+saflex") == (f"diffusion(p0.5,{CID})+rand-m9-n2", "saflex")
    assert canonical_method(f"diffusion(p.5,{CID})+saflex") == f"diffusion(p0.5,{CID})+saflex"
    nested = baselines.create_method(f"noisy(0.3,diffusion(p0.5,{CID})+cutmix-a1)")
    assert nested.has_sample_stage and nested.has_batch_stage
    for bad, why in ((f"diffusion(p1.5,{CID})", "must be in"), ("diffusion(p0.5,xyz)", "10 hex"),
                     ("diffusion(0.5)", "expected diffusion"), (f"diffusion(p0.5,{CID})+bogus", "unknown method")):
        with pytest.raises(baselines.PolicyError, match=why):
            baselines.create_method(bad)


# ---- draws on a bound table (no pipeline) ------------------------------------------------------
def _bound(p: float, inner: str | None = None, n: int = 6, m: int = 3):
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (n, 1, 8, 8), generator=g, dtype=torch.uint8)
    table = {}
    for i, img in enumerate(x[:-1]):  # variant k of image i is filled with 100 + 10 i + k
        table[image_key(img)] = np.stack([np.full((1, 8, 8), 100 + 10 * i + k, np.uint8) for k in range(m)])
    up = Diffusion(p, CID, baselines.create_method(inner) if inner else baselines.NoAugmentation(), table)
    return up, x


def test_draw_uses_the_variants_of_the_image_itself_with_probability_p():
    up, x = _bound(0.5)
    synthetic = 0
    for t in range(400):
        i = t % 5
        out = up.sample_transform(x[i], torch.Generator().manual_seed(t))
        if torch.equal(out, x[i]):
            continue
        synthetic += 1
        assert 100 + 10 * i <= int(out[0, 0, 0]) < 100 + 10 * i + 3 and out.dtype == torch.uint8  # its own variants
    assert 0.4 < synthetic / 400 < 0.6
    always, _ = _bound(1.0)
    assert all(not torch.equal(always.sample_transform(x[i], torch.Generator().manual_seed(i)), x[i]) for i in range(5))
    never, _ = _bound(0.0)
    assert all(torch.equal(never.sample_transform(x[i], torch.Generator().manual_seed(i)), x[i]) for i in range(5))
    # an image with no variants (e.g. a reference image under the `ref` learner) stays real
    assert torch.equal(always.sample_transform(x[5], torch.Generator().manual_seed(0)), x[5])


def test_same_generator_same_draw_and_the_inner_policy_runs_after():
    up, x = _bound(0.5, "rand-m9-n2")
    a = [up.sample_transform(x[1], torch.Generator().manual_seed(s)) for s in range(20)]
    b = [up.sample_transform(x[1], torch.Generator().manual_seed(s)) for s in range(20)]
    assert all(torch.equal(u, v) for u, v in zip(a, b))
    plain, _ = _bound(0.5)
    # the inner policy changed some images beyond the plain diffusion draw
    assert any(not torch.equal(u, plain.sample_transform(x[1], torch.Generator().manual_seed(s))) for s, u in enumerate(a))


def test_unbound_or_missing_cache_is_one_line_with_the_generate_command(tmp_path, monkeypatch):
    monkeypatch.setenv("SAFLEX_CACHE", str(tmp_path))
    up = baselines.create_method(f"diffusion(p0.5,{CID})")
    with pytest.raises(RuntimeError, match="bind"):
        up.sample_transform(torch.zeros(1, 8, 8, dtype=torch.uint8), torch.Generator())
    with pytest.raises(CacheError) as e:
        up.bind(torch.zeros(2, 1, 8, 8, dtype=torch.uint8), torch.zeros(2, dtype=torch.int64))
    msg = str(e.value)
    assert "\n" not in msg and f"saflex-bench generate --id {CID}" in msg and str(tmp_path) in msg


def test_cache_id_names_the_pixels_not_the_runtime():
    a = GenerationSpec(task="medmnist/breastmnist", model="m")
    assert a.cache_id == GenerationSpec(task="medmnist/breastmnist", model="m").cache_id
    for change in (dict(strength=0.6), dict(seed=1), dict(prompt="a {class}"), dict(variants=2), dict(dtype="float32"),
                   dict(splits=("train", "val")), dict(limit=5)):
        assert GenerationSpec(**{"task": "medmnist/breastmnist", "model": "m", **change}).cache_id != a.cache_id, change
    for bad in (dict(strength=0), dict(splits=("test",)), dict(prompt="a {klass}"), dict(dtype="int8"), dict(resolution=30)):
        with pytest.raises(UsageError):
            GenerationSpec(**{"task": "medmnist/breastmnist", "model": "m", **bad})


# ---- the tiny random pipeline on real images ------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    return str(make_tiny_pipeline(tmp_path_factory.mktemp("tiny") / "sd"))


@pytest.fixture(scope="module")
def tiny_pipe(tiny_model):
    from bench.generate import load_pipeline

    return load_pipeline(tiny_model, "float32", "cpu")


class Killed(Exception):
    pass


class Counting:
    """The pipeline, counting calls; raises Killed on call number `fail_at` (a job killed mid-shard)."""

    def __init__(self, pipe, fail_at: int | None = None):
        self.pipe, self.fail_at, self.calls = pipe, fail_at, 0

    def __call__(self, **kw):
        self.calls += 1
        if self.fail_at is not None and self.calls == self.fail_at:
            raise Killed(f"killed at pipeline call {self.calls}")
        return self.pipe(**kw)


def _spec(tiny_model, **kw):
    return GenerationSpec(task="medmnist/breastmnist", model=tiny_model, variants=2, steps=4, resolution=32,
                          dtype="float32", limit=8, prompt="a photo of a {class}", **kw)


def _contents(root, cid):
    return {k: v.copy() for k, v in load_variants(cid, root).items()}


@pytest.mark.slow
def test_generate_skip_resume_and_regenerate(tmp_path, medmnist_root, tiny_model, tiny_pipe):
    gspec = _spec(tiny_model)
    run = dict(chunk=4, batch_size=2, device="cpu", log=lambda m: None)  # 8 images: 2 chunks, 2 calls each

    # uninterrupted reference
    ref = generate(gspec, medmnist_root, tmp_path / "ref", pipeline=Counting(tiny_pipe), **run)
    assert (ref.images, ref.chunks, ref.generated_images) == (8, 2, 8)
    want = _contents(tmp_path / "ref", gspec.cache_id)
    assert len(want) == 8 and all(v.shape == (2, 1, 28, 28) and v.dtype == np.uint8 for v in want.values())
    first = next(iter(want.values()))
    assert not np.array_equal(first[0], first[1])  # two variants differ

    # skip on rerun: the pipeline is never called
    again = generate(gspec, medmnist_root, tmp_path / "ref", pipeline=Counting(tiny_pipe, fail_at=1), **run)
    assert (again.generated_images, again.skipped_chunks) == (0, 2)

    # killed in the 2nd chunk (3rd call): chunk 0 kept, chunk 1 absent; the rerun does only chunk 1
    root = tmp_path / "killed"
    with pytest.raises(Killed):
        generate(gspec, medmnist_root, root, pipeline=Counting(tiny_pipe, fail_at=3), **run)
    st = cache_state(gspec.cache_id, root)
    assert (st["state"], st["done"], st["total"]) == ("incomplete", 1, 2)
    with pytest.raises(CacheError, match="incomplete .* make it with: saflex-bench generate --task medmnist/breastmnist"):
        load_variants(gspec.cache_id, root)
    pipe = Counting(tiny_pipe)
    resumed = generate(gspec, medmnist_root, root, pipeline=pipe, **run)
    assert (resumed.generated_images, resumed.skipped_chunks, pipe.calls) == (4, 1, 2)
    got = _contents(root, gspec.cache_id)
    assert got.keys() == want.keys() and all(np.array_equal(got[k], want[k]) for k in want)  # nothing lost or doubled

    # a corrupt chunk is detected (sha256) and regenerated to the same pixels
    chunk = cache_dir(gspec.cache_id, root) / "chunks" / "00001.npz"
    chunk.write_bytes(b"garbage")
    assert cache_state(gspec.cache_id, root)["state"] == "corrupt"
    with pytest.raises(CacheError, match="corrupt"):
        load_variants(gspec.cache_id, root)
    fixed = generate(gspec, medmnist_root, root, pipeline=Counting(tiny_pipe), **run)
    assert (fixed.regenerated_chunks, fixed.generated_images) == (1, 4)
    got = _contents(root, gspec.cache_id)
    assert all(np.array_equal(got[k], want[k]) for k in want)

    # batching and sharding do not change the pixels
    sharded = tmp_path / "sharded"
    for shard in (1, 0):
        generate(gspec, medmnist_root, sharded, pipeline=tiny_pipe, shard=shard, shards=2,
                 **{**run, "batch_size": 3})
    got = _contents(sharded, gspec.cache_id)
    assert all(np.array_equal(got[k], want[k]) for k in want)


@pytest.mark.slow
def test_train_on_the_cache_with_and_without_saflex(tmp_path, medmnist_root, tiny_model, tiny_pipe, monkeypatch):
    from bench.runner import run_spec
    from bench.spec import make_spec
    from bench.tasks import get_task
    from bench.trainer import Trainer
    from bench.data import with_reference
    from bench.store import ResultsStore

    monkeypatch.setenv("SAFLEX_CACHE", str(tmp_path / "cache"))
    gspec = GenerationSpec(**{**_spec(tiny_model).to_dict(), "limit": 24})
    generate(gspec, medmnist_root, None, pipeline=tiny_pipe, chunk=8, batch_size=8, device="cpu", log=lambda m: None)
    method = f"diffusion(p0.5,{gspec.cache_id})"
    over = dict(epochs=1, model="small_cnn", batch_size=64, ref_frac=0.5)

    # X and X+saflex see the same augmented batches; some of them synthetic (p=1 and the covered images)
    def digest(m):
        spec = make_spec("medmnist/breastmnist", m, 0, over)
        task = get_task(spec.task)
        data = with_reference(task.load(medmnist_root, spec), spec.ref_frac, spec.ref_from, 0)
        tr = Trainer(spec, task, data, ResultsStore(tmp_path / "digest" / m), progress=False)
        h = hashlib.sha256()
        for b in tr.batches(0):
            h.update(b.x.numpy().tobytes())
        return h.hexdigest(), tr

    (dx, tr), (ds, _) = digest(method), digest(method + "+saflex")
    assert dx == ds
    assert digest(f"diffusion(p0.0,{gspec.cache_id})")[0] != dx  # the synthetic draws do reach the batches
    covered = sum(image_key(img) in tr.upstream.table for img in tr.trainset.x)
    assert covered >= 24  # the first 24 distinct training images (and any duplicates of them)

    for m in (method, method + "+saflex", f"diffusion(p0.5,{gspec.cache_id})+rand-m9-n2+saflex"):
        rec = run_spec(make_spec("medmnist/breastmnist", m, 0, over), tmp_path / "results", medmnist_root, progress=False)
        assert rec["status"] == "done" and 0.0 <= rec["metrics"]["test_acc"] <= 1.0, m


# ---- sweep file and CLI -----------------------------------------------------------------------------
def _sweep(tmp_path, body: str):
    p = tmp_path / "s.yaml"
    p.write_text(textwrap.dedent(body))
    return p


GEN = """
    name: d
    generate:
      shards: 2
      launcher: {gpus_per_node: 1}
      caches:
        sd: {task: medmnist/breastmnist, model: runwayml/stable-diffusion-v1-5, variants: 4}
    fixed: {task: medmnist/breastmnist}
    grid:
      method: [none, "diffusion(p0.5,@sd)", "diffusion(p0.5,@sd)+rand-m9-n2+saflex"]
"""


def test_sweep_generate_section_names_caches_by_name(tmp_path):
    from sweeps.config import load_sweep
    from sweeps.generate_stage import stage_launcher

    cfg = load_sweep(_sweep(tmp_path, GEN))
    cid = GenerationSpec(task="medmnist/breastmnist", model="runwayml/stable-diffusion-v1-5", variants=4).cache_id
    assert cfg.generate.shards == 2 and cfg.generate.caches["sd"].cache_id == cid
    assert cfg.grids[0]["method"] == ("none", f"diffusion(p0.5,{cid})", f"diffusion(p0.5,{cid})+rand-m9-n2+saflex")
    assert stage_launcher(cfg.launcher, cfg.generate).gpus_per_node == 1 and cfg.launcher.gpus_per_node == 0
    for old, new, why in (("@sd)\"", "@other)\"", "unknown cache @other"), ("shards: 2", "shards: 0", "generate.shards"),
                          ("variants: 4", "variants: 4, strenght: 1", "unknown generation parameter 'strenght'"),
                          ("gpus_per_node: 1", "gpu: 1", "generate.launcher.gpu")):
        with pytest.raises(UsageError, match=why):
            load_sweep(_sweep(tmp_path, GEN.replace(old, new, 1)))


def test_shipped_diffusion_sweeps_parse():
    from sweeps.config import load_sweep
    from sweeps.plan import plan_sweep

    for name in ("diffusion", "diffusion_cpu"):
        cfg = load_sweep(name)
        assert cfg.generate is not None
        plan = plan_sweep(cfg)
        assert any(r.spec.method.startswith("diffusion(") and r.spec.method.endswith("+saflex") for r in plan.runs)


def test_generate_cli_prints_the_id_and_finds_it_by_id(tmp_path, capsys):
    from bench.cli import main

    argv = ["generate", "--task", "medmnist/breastmnist", "--model", "runwayml/stable-diffusion-v1-5", "--variants", "4",
            "--cache", str(tmp_path), "--print-id"]
    assert main(argv) == 0
    cid = GenerationSpec(task="medmnist/breastmnist", model="runwayml/stable-diffusion-v1-5", variants=4).cache_id
    out = capsys.readouterr().out
    assert f"cache {cid}" in out and f"diffusion(p0.5,{cid})" in out and "state missing" in out
    assert main(["generate", "--id", cid, "--from", str(_sweep(tmp_path, GEN)), "--cache", str(tmp_path), "--print-id"]) == 0
    assert f"cache {cid}" in capsys.readouterr().out
    assert main(["generate", "--id", "ffffffffff", "--cache", str(tmp_path)]) == 2
    assert "is in no generate: section" in capsys.readouterr().err
