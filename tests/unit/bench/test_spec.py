import dataclasses

import pytest

from bench.errors import UsageError
from bench.spec import RunSpec, make_spec, parse_assignments

# SAFLEX's earlier default reference steps, whose runs are stored (the MedMNIST study): the first
# release's and an interim one. History, so spelled out here rather than read from the code.
FIRST_SAFLEX_DEFAULTS = {"val_batch": 512, "refresh": 1, "ref_ema": 0.0}
INTERIM_SAFLEX_DEFAULTS = {"val_batch": 32, "refresh": 4, "ref_ema": 0.5}
PAST_SAFLEX_DEFAULTS = {"first release": FIRST_SAFLEX_DEFAULTS, "interim": INTERIM_SAFLEX_DEFAULTS}


def base():
    return make_spec("digits/sklearn", "rand-m9-n2", seed=0)


def test_key_is_stable_and_short():
    a, b = base(), base()
    assert a.key == b.key and len(a.key) == 12
    # the canonical form round-trips and a pinned spec keeps its key across releases
    assert RunSpec.from_dict(a.to_dict()).key == a.key
    assert make_spec("digits/sklearn", "none", 0, {"epochs": 3}).canonical_json() == (
        '{"as_rgb":false,"batch_size":64,"epochs":3,"gamma":0.1,"lr":0.003,"method":"none","milestones":[0.5,0.75],'
        '"model":"small_cnn","momentum":0.9,"optimizer":"adam","saflex":null,"schedule":"cosine","seed":0,'
        '"select_metric":"acc","task":"digits/sklearn","weight_decay":0.0}'
    )


CHANGES = {
    "task": "medmnist/breastmnist", "method": "cutmix-a1.0", "model": "resnet18", "seed": 1, "epochs": 16,
    "optimizer": "sgd", "lr": 0.01, "weight_decay": 5e-4, "momentum": 0.5, "schedule": "multistep",
    "milestones": "0.3,0.6", "gamma": 0.2, "batch_size": 32, "select_metric": "auc", "as_rgb": "true",
    "ref_frac": "0.5",
}
NEEDS = {"ref_from": ({"ref_frac": 0.5}, "train")}  # fields that matter only next to another one


@pytest.mark.parametrize("name", [f.name for f in dataclasses.fields(RunSpec) if f.name not in ("knobs", "options")])
def test_every_identity_field_changes_the_key(name):
    assert name in CHANGES or name in NEEDS, f"add a changed value for new field {name!r}"
    start = base()
    if name in NEEDS:
        start, value = start.with_overrides(NEEDS[name][0]), NEEDS[name][1]
    else:
        value = CHANGES[name]
    changed = start.with_overrides({name: value})
    assert getattr(changed, name) != getattr(start, name)
    assert changed.key != start.key


# keys computed by the first release (commit 1639711) for specs stored in users' results: the learner
# redesign must not orphan them. SAFLEX's default knobs have moved since (FIRST_SAFLEX_DEFAULTS), so
# the first release's default is spelled out here.
PINNED_KEYS = {"rand-m9-n2+saflex": "04617f4fc6ca", "none": "80a9aa54c7d4", "noisy(0.3,rand-m9-n2)+saflex": "7091437edefd"}
FIRST = {f"saflex.{k}": v for k, v in FIRST_SAFLEX_DEFAULTS.items()}


@pytest.mark.parametrize("method", sorted(PINNED_KEYS))
def test_keys_of_the_first_release_stay_valid(method):
    s = make_spec("medmnist/breastmnist", method, 1, {"model": "small_cnn", "epochs": 20, "saflex.eps": 0.1, **FIRST})
    assert s.key == PINNED_KEYS[method]
    assert RunSpec.from_dict(s.to_dict()).key == s.key
    assert s.semantics == {} and "semantics" not in s.to_dict()  # the first semantics: nothing added to the key


# specs of the committed study store (reports/studies/saflex_fair_results, landed 2026-11-30) and their
# folder names: every record whose components still compute as they did keeps its key. The ramped
# refresh="auto" records are the exception: SAFLEX semantics 2 names them (scripts/migrate_store.py).
LANDED = {
    "00d915791436": {"method": "cutmix-a1.0", "seed": 2, "task": "medmnist/retinamnist"},
    "01e15479e64a": {"method": "mixup-a0.2+ref", "seed": 3, "task": "medmnist/pneumoniamnist", "epochs": 5},
    "017588f6a457": {"method": "rand-m9-n2+saflex", "seed": 4, "task": "medmnist/breastmnist",
                     "saflex": {**FIRST_SAFLEX_DEFAULTS, "refresh": 1}},
    "01dfe4c31e51": {"method": "cutmix-a1.0+saflex", "seed": 2, "task": "medmnist/retinamnist",
                     "saflex": {**INTERIM_SAFLEX_DEFAULTS}},
}
LANDED_COMMON = {"as_rgb": False, "batch_size": 128, "epochs": 20, "gamma": 0.1, "lr": 0.001, "milestones": [0.5, 0.75],
                 "model": "small_cnn", "momentum": 0.9, "optimizer": "adam", "ref_frac": 0.5, "saflex": None,
                 "schedule": "multistep", "select_metric": "auc", "weight_decay": 0.0}
LANDED_SAFLEX = {"bn_mode": "train", "clean_weight": 0.0, "eps": 0.0, "label_T": 1.0, "labels": "lp", "normalize": True,
                 "reference": "val", "residual": "ce", "residual_T": 2.0, "residual_margin": 1.0, "rho": None,
                 "tau": 1.0, "warmup_epochs": 0, "weights": "sigmoid"}
# the ramped default's record 010dcd9b2ba5 (mixup-a0.2+saflex, refresh=auto) and its key under semantics 2
RAMPED = ("010dcd9b2ba5", "9fc749502723", {"method": "mixup-a0.2+saflex", "seed": 2, "task": "medmnist/breastmnist",
                                           "saflex": {"refresh": "auto", "val_batch": 512}})


def landed_spec(fields):
    d = {**LANDED_COMMON, **fields}
    if d["saflex"] is not None:
        d["saflex"] = {**LANDED_SAFLEX, **d["saflex"]}
    return d


@pytest.mark.parametrize("key", sorted(LANDED))
def test_keys_of_the_landed_store_stay_valid(key):
    spec = RunSpec.from_dict(landed_spec(LANDED[key]))
    assert spec.semantics == {} and "semantics" not in spec.to_dict()
    assert spec.key == key


def test_the_ramped_default_is_saflex_semantics_2(monkeypatch):
    from bench.learners.saflex import SaflexLearner

    old_key, new_key, fields = RAMPED
    with monkeypatch.context() as m:  # the code before the ramp: its (unramped) rule had this key
        m.setattr(SaflexLearner, "semantics_for", classmethod(lambda cls, knobs: 1))
        assert RunSpec.from_dict(landed_spec(fields)).key == old_key
    spec = RunSpec.from_dict(landed_spec(fields))
    assert spec.semantics == {"learner:saflex": 2} and spec.to_dict()["semantics"] == {"learner:saflex": 2}
    assert spec.key == new_key != old_key
    assert RunSpec.from_dict(spec.to_dict()).key == new_key  # a record's own spec (semantics in it) reads back
    # the same spec without the ramp computes as under semantics 1: the old canonical form + the knob
    off = spec.with_overrides({"saflex.ref_ramp": False})
    assert off.semantics == {} and off.to_dict()["saflex"]["ref_ramp"] is False


def test_a_stored_spec_without_a_later_knob_ran_without_it():
    """A record written before `ref_ema` existed has no ref_ema in its spec: read back it must mean 0
    (what ran), not today's default, and keep its key."""
    old = make_spec("medmnist/breastmnist", "rand-m9-n2+saflex", 1, {"model": "small_cnn", "epochs": 20, **FIRST})
    stored = old.to_dict()
    assert "ref_ema" not in stored["saflex"]
    back = RunSpec.from_dict(stored)
    assert back.knobs["ref_ema"] == 0.0 and back.key == old.key


def test_todays_saflex_default_is_a_different_run_from_the_earlier_ones():
    now = make_spec("medmnist/breastmnist", "rand-m9-n2+saflex", 1, {"model": "small_cnn", "epochs": 20})
    keys = {now.key}
    for past in PAST_SAFLEX_DEFAULTS.values():
        assert {k: now.knobs[k] for k in past} != past
        keys.add(make_spec("medmnist/breastmnist", "rand-m9-n2+saflex", 1,
                           {"model": "small_cnn", "epochs": 20, **{f"saflex.{k}": v for k, v in past.items()}}).key)
    assert len(keys) == 1 + len(PAST_SAFLEX_DEFAULTS)
    assert now.to_dict()["saflex"]["refresh"] == "auto"
    assert RunSpec.from_dict(now.to_dict()).key == now.key


def test_a_stored_interim_default_run_keeps_its_key_and_meaning():
    """The interim default's records (val_batch=32, refresh=4, ref_ema=0.5) predate ref_budget: read
    back they keep their key, and their fixed refresh makes the budget irrelevant."""
    knobs = {f"saflex.{k}": v for k, v in INTERIM_SAFLEX_DEFAULTS.items()}
    old = make_spec("medmnist/breastmnist", "rand-m9-n2+saflex", 1, {"model": "small_cnn", "epochs": 20, **knobs})
    stored = old.to_dict()
    assert "ref_budget" not in stored["saflex"] and stored["saflex"]["ref_ema"] == 0.5
    back = RunSpec.from_dict(stored)
    assert back.key == old.key and back.knobs["refresh"] == 4


def test_the_ramp_is_in_the_key_only_when_switched_off():
    """ref_ramp acts on refresh=auto only, which no record before the knob used: absent means on, so
    the pinned earlier defaults keep their keys, and a run without the ramp is a different run."""
    now = make_spec("medmnist/breastmnist", "rand-m9-n2+saflex", 1, {"model": "small_cnn", "epochs": 20})
    off = now.with_overrides({"saflex.ref_ramp": False})
    assert "ref_ramp" not in now.to_dict()["saflex"] and off.to_dict()["saflex"]["ref_ramp"] is False
    assert off.key != now.key and RunSpec.from_dict(off.to_dict()).knobs["ref_ramp"] is False


def test_later_fields_enter_the_key_only_when_set():
    d = base().to_dict()
    assert "ref_frac" not in d and "ref_from" not in d and "options" not in d
    assert base().with_overrides({"ref_from": "train"}).key == base().key  # no reference part: no effect
    assert base().with_overrides({"ref_frac": 0.5}).to_dict()["ref_frac"] == 0.5


def test_learner_knobs_live_under_the_learner_name():
    s = make_spec("digits/sklearn", "rand-m9-n2+saflex", overrides={"saflex.eps": 0.1})
    assert s.learner == "saflex" and s.to_dict()["saflex"]["eps"] == 0.1
    r = make_spec("digits/sklearn", "rand-m9-n2+ref", overrides={"ref_frac": 0.5, "saflex.eps": 0.1})
    assert r.learner == "ref" and r.to_dict()["saflex"] is None and "ref" not in r.to_dict()


def test_saflex_knobs_are_identity_only_for_saflex_methods():
    s = make_spec("digits/sklearn", "rand-m9-n2+saflex")
    assert s.saflex is not None and s.uses_saflex and s.upstream == "rand-m9-n2"
    assert s.with_overrides({"saflex.eps": "0.05"}).key != s.key
    assert s.with_overrides({"saflex.eps": "0.05"}).saflex["eps"] == 0.05
    plain = base()
    assert plain.saflex is None and plain.with_overrides({"saflex.eps": "0.05"}).key == plain.key


def test_equivalent_spellings_give_one_key():
    assert base().with_overrides({"lr": "0.003"}).key == base().with_overrides({"lr": 3e-3}).key
    assert base().with_overrides({"epochs": "15"}).key == base().key


def test_data_root_and_device_are_not_identity():
    names = {f.name for f in dataclasses.fields(RunSpec)}
    assert not names & {"data_root", "device", "workers", "wandb_mode", "results"}


@pytest.mark.parametrize("overrides, needle", [
    ({"nope": "1"}, "unknown run field 'nope'"),
    ({"epochs": "two"}, "'epochs' expects int"),
    ({"epochs": "0"}, "must be >= 1"),
    ({"optimizer": "lion"}, "unknown optimizer 'lion' (valid: adam, adamw, sgd)"),
    ({"model": "vit"}, "unknown model 'vit' (valid:"),
    ({"milestones": "0.5,1.5"}, "fractions of epochs"),
    ({"ref_frac": "1.5"}, "'ref_frac' must be in (0, 1)"),
    ({"ref_frac": "0.5", "ref_from": "test"}, "unknown ref_from 'test' (valid: val, train)"),
    ({"select_metric": "f1"}, "unknown select_metric 'f1' (valid: acc, auc, loss, last)"),
    ({"task.width": "3"}, "task digits/sklearn has no options"),
    ({"method": "none+ref"}, "set ref_frac"),
])
def test_bad_overrides_name_the_problem(overrides, needle):
    with pytest.raises(UsageError) as e:
        base().with_overrides(overrides)
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_bad_task_and_method():
    with pytest.raises(UsageError, match=r"unknown task 'medmnist/nope' \(valid: .*medmnist/breastmnist"):
        make_spec("medmnist/nope", "none")
    with pytest.raises(UsageError, match="randaug"):
        make_spec("digits/sklearn", "randaug")
    with pytest.raises(UsageError, match="saflex knobs: .*eps"):
        make_spec("digits/sklearn", "none+saflex", overrides={"saflex.eps": "-1"})
    with pytest.raises(UsageError, match="saflex knobs: .*unknown"):
        make_spec("digits/sklearn", "none+saflex", overrides={"saflex.nope": "1"})


def test_parse_assignments():
    assert parse_assignments(["lr=0.1", "saflex.eps = 0.2"]) == {"lr": "0.1", "saflex.eps": "0.2"}
    with pytest.raises(UsageError, match="malformed --set 'lr'"):
        parse_assignments(["lr"])
