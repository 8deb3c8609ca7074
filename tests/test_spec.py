import dataclasses

import pytest

from bench.errors import UsageError
from bench.spec import RunSpec, make_spec, parse_assignments


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
}


@pytest.mark.parametrize("name", [f.name for f in dataclasses.fields(RunSpec) if f.name != "saflex"])
def test_every_identity_field_changes_the_key(name):
    assert name in CHANGES, f"add a changed value for new field {name!r}"
    changed = base().with_overrides({name: CHANGES[name]})
    assert getattr(changed, name) != getattr(base(), name)
    assert changed.key != base().key


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
    with pytest.raises(UsageError, match="saflex.eps"):
        make_spec("digits/sklearn", "none+saflex", overrides={"saflex.eps": "-1"})


def test_parse_assignments():
    assert parse_assignments(["lr=0.1", "saflex.eps = 0.2"]) == {"lr": "0.1", "saflex.eps": "0.2"}
    with pytest.raises(UsageError, match="malformed --set 'lr'"):
        parse_assignments(["lr"])
