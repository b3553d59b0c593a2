"""The option validators every estimator uses: each refusal names the parameter, the value and what is allowed."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from precedents import PrecedentsError
from precedents._validation import all_finite, check_choice, check_finite, check_param_names, check_scalar

NAN, INF = float("nan"), float("inf")


@pytest.mark.parametrize("value, kwargs, message", [
    (NAN, {}, r"damping must be a finite number; got nan"),
    (INF, {"low": 0.0}, r">= 0; got inf"),
    (-INF, {}, r"got -inf"),
    (-1e-3, {"low": 0.0}, r"damping must be a finite number >= 0; got -0.001"),
    (0.0, {"low": 0.0, "low_inclusive": False}, r"> 0; got 0.0"),
    (1.5, {"low": 0.0, "high": 1.0}, r"in \[0, 1\]; got 1.5"),
    (1.0, {"low": 0.0, "high": 1.0, "high_inclusive": False}, r"in \[0, 1\); got 1.0"),
    (True, {}, r"got True \(bool\)"),
    ("1e-3", {}, r"got '1e-3' \(str\)"),
    (None, {}, r"got None \(NoneType\)"),
    ([0.1], {}, r"got \[0.1\] \(list\)"),
    (torch.tensor([1.0, 2.0]), {}, r"\(Tensor\)"),
    (complex(1, 1), {}, r"\(complex\)"),
    (NAN, {"allow_none": True}, r"or None; got nan"),
    (2.5, {"kind": int}, r"finite integer; got 2.5"),
    (0, {"kind": int, "low": 1}, r"integer >= 1; got 0"),
    (-3, {"kind": int, "low": 1, "why": "examples per batch"}, r">= 1 \(examples per batch\); got -3"),
    (np.float64(NAN), {}, r"got (np.float64\()?nan"),
])
def test_check_scalar_refuses(value, kwargs, message):
    with pytest.raises(PrecedentsError, match=message):
        check_scalar("damping", value, **kwargs)


@pytest.mark.parametrize("value, kwargs, expected", [
    (0.0, {"low": 0.0}, 0.0),
    (3, {}, 3.0),
    (np.float32(0.25), {"low": 0.0, "high": 1.0}, 0.25),
    (torch.tensor(0.5), {}, 0.5),
    (np.int64(7), {"kind": int, "low": 1}, 7),
    (8.0, {"kind": int}, 8),
    (None, {"allow_none": True}, None),
    (1e300, {"low": 0.0}, 1e300),
])
def test_check_scalar_accepts_and_converts(value, kwargs, expected):
    out = check_scalar("x", value, **kwargs)
    assert out == expected and type(out) is type(expected)


def test_check_choice():
    assert check_choice("solver", "cg", ["cg", "lissa"]) == "cg"
    with pytest.raises(PrecedentsError, match=r"solver='lisa' is not one of 'cg', 'lissa'\. Did you mean 'lissa'\?"):
        check_choice("solver", "lisa", ["cg", "lissa"])
    with pytest.raises(PrecedentsError, match=r"kind=\['dot'\]"):
        check_choice("kind", ["dot"], ["dot", "cos"])                   # unhashable
    with pytest.raises(PrecedentsError, match="progress=1"):
        check_choice("progress", 1, (True, False))                      # 1 is not True here
    with pytest.raises(PrecedentsError, match="progress=None"):
        check_choice("progress", None, (True, False))
    assert check_choice("progress", np.bool_(False), (True, False)) is not None
    with pytest.raises(PrecedentsError, match="mode=array"):
        check_choice("mode", np.array([1, 2]), (1, 2))


@pytest.fixture(scope="module")
def mlp():
    return nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))


def test_check_param_names(mlp):
    assert check_param_names(mlp, "head") == "head"
    assert check_param_names(mlp, "all") == "all"
    assert check_param_names(mlp, "2.weight") == ["2.weight"]               # one name, not its letters
    assert check_param_names(mlp, ("0.weight", "2.bias")) == ["0.weight", "2.bias"]
    with pytest.raises(PrecedentsError, match=r"params=\[\] selects no parameters.*0.weight, 0.bias"):
        check_param_names(mlp, [])
    with pytest.raises(PrecedentsError, match=r"params='hed' is neither 'head' nor 'all'.*Did you mean 'head'\?"):
        check_param_names(mlp, "hed")
    with pytest.raises(PrecedentsError, match=r"'2.wieght' \(did you mean '2.weight'\?\), 'zzz'.*Its parameters are: "
                                              r"0.weight, 0.bias, 2.weight, 2.bias"):
        check_param_names(mlp, ["2.wieght", "zzz"])
    with pytest.raises(PrecedentsError, match=r"names \['0.bias'\] more than once"):
        check_param_names(mlp, ["0.bias", "0.bias"])
    with pytest.raises(PrecedentsError, match="as strings"):
        check_param_names(mlp, [mlp[0].weight])
    with pytest.raises(PrecedentsError, match="or a list of parameter names; got 3"):
        check_param_names(mlp, 3)
    with pytest.raises(PrecedentsError, match="params=''"):
        check_param_names(mlp, "")


def test_check_finite_names_rows_and_handles_every_dtype():
    check_finite("X", torch.arange(6).reshape(3, 2))                     # integers are finite
    check_finite("X", torch.zeros(0, 4))
    check_finite("X", torch.full((3,), 6e4, dtype=torch.float16))       # large but finite half values
    check_finite("X", torch.full((4,), 1e308, dtype=torch.float64))     # the float64 sum overflows; entries are fine
    bad = torch.zeros(10, 3)
    bad[4, 1] = NAN
    with pytest.raises(PrecedentsError, match=r"rows 24\)"):
        check_finite("X", bad, offset=20)
    assert not all_finite(torch.tensor([1.0, INF, -INF]))
    assert not all_finite(torch.tensor([complex(1, NAN)]))


def test_check_finite_allocates_no_full_size_temporary():
    """The common (finite) case must not materialise a boolean mask or a float64 copy of the tensor: the
    profiler's largest CPU allocation during the check stays far below the tensor's size."""
    X = torch.rand(4_000_000)                                          # 16 MB
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        check_finite("X", X)
    largest = max((e.cpu_memory_usage for e in prof.events()), default=0)
    assert largest < X.numel()            # < 4 MB: neither a bool mask (4 MB) nor a float64 copy (32 MB)


def test_check_labels_names_the_problem():
    from precedents._validation import check_labels

    with pytest.raises(PrecedentsError, match="y is missing"):
        check_labels(None, 3, 4)
    with pytest.raises(PrecedentsError, match=r"class indices 0..2; got \['a', 'b', 'c'\]"):
        check_labels(np.array(["a", "b", "c", "a"]), 3, 4)
    with pytest.raises(PrecedentsError, match=r"one-hot or probability rows.*y.argmax\(1\)"):
        check_labels(torch.eye(3)[[0, 1, 2, 0]], 3, 4)
    with pytest.raises(PrecedentsError, match="non-integer"):
        check_labels(torch.tensor([0.0, float("nan"), 1.0, 2.0]), 3, 4)
    with pytest.raises(PrecedentsError, match=r"from -1 to 2"):
        check_labels(torch.tensor([0, -1, 1, 2], dtype=torch.int8), 3, 4)
    assert check_labels(np.array([[0], [2], [1], [1]], dtype=np.uint8), 3, 4).tolist() == [0, 2, 1, 1]


@pytest.mark.parametrize("batch_size", [0, -1, 2.5, "64", None, True])
def test_adapters_refuse_bad_batch_sizes(batch_size):
    from sklearn.datasets import load_iris
    from sklearn.ensemble import GradientBoostingClassifier
    from sklearn.linear_model import LogisticRegression

    from precedents.adapters import head_adapter

    X, y = load_iris(return_X_y=True)
    models = (nn.Linear(4, 3), LogisticRegression(max_iter=300).fit(X, y),
              GradientBoostingClassifier(n_estimators=2, max_depth=1).fit(X, y))
    for model in models:
        with pytest.raises(PrecedentsError, match="batch_size must be a finite integer >= 1"):
            head_adapter(model, batch_size=batch_size, progress=False)
