"""Feature attribution (seed 002) through Captum: each method checked against a closed form or autograd."""

from __future__ import annotations

import sys
import warnings

import pytest
import torch
from torch import nn

import precedents as pc
from precedents.demos import datasets
from precedents.features import add_stroke, feature_attributions, tcav


@pytest.fixture(scope="module")
def linear_images(mnist_small):
    """Multinomial logistic regression on real MNIST pixels (a linear model: closed forms exist)."""
    Xtr, ytr, Xte, _ = mnist_small
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 10))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(60):
        opt.zero_grad()
        nn.functional.cross_entropy(model(Xtr[:2000]), ytr[:2000]).backward()
        opt.step()
    return model.double().eval(), Xte[:3].double()


def test_saliency_is_the_autograd_gradient_and_ig_is_complete(mnist_cnn, mnist_small):
    _, _, Xte, _ = mnist_small
    X = Xte[:4]
    target = torch.tensor([3, 1, 4, 1])
    out = feature_attributions(mnist_cnn, X, target, methods=["saliency", "ig"], ig_steps=300)
    x = X.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(mnist_cnn(x).gather(1, target[:, None]).sum(), x)
    torch.testing.assert_close(out["saliency"], grad.double(), rtol=1e-5, atol=1e-7)
    # completeness: the attributions add up to logit(x) - logit(baseline = black image)
    with torch.no_grad():
        delta = (mnist_cnn(X) - mnist_cnn(torch.zeros_like(X))).gather(1, target[:, None])[:, 0].double()
    total = out["ig"].sum(dim=(1, 2, 3))
    assert float((total - delta).abs().max()) < 1e-2 * float(delta.abs().max())
    assert out["ig"].shape == X.shape and out["saliency"].shape == X.shape


def test_occlusion_lime_smoothgrad_on_a_linear_model_equal_closed_forms(linear_images):
    model, X = linear_images
    W = model[1].weight.detach()
    target = model(X).argmax(1)
    out = feature_attributions(model, X, None, methods=["occlusion", "lime", "smoothgrad"], patch=4,
                               baseline=0.0, lime_samples=150)
    # occlusion, 4x4 patches: every pixel shows f(x) - f(x with its patch blacked out) = sum_{j in patch} w_cj x_j
    contrib = (W[target] * X.reshape(3, -1)).reshape(3, 7, 4, 7, 4)
    per_patch = contrib.sum(dim=(2, 4))                                        # (3, 7, 7)
    expected = per_patch[:, :, None, :, None].expand(3, 7, 4, 7, 4).reshape(3, 1, 28, 28)
    torch.testing.assert_close(out["occlusion"], expected, rtol=1e-6, atol=1e-7)   # Captum sums in float32
    # LIME's least-squares surrogate is exact for a model linear in the patch-presence features (fit in float32)
    assert float(expected.abs().max()) > 0.5
    torch.testing.assert_close(out["lime"], expected, rtol=1e-5, atol=1e-5)
    # the gradient of a linear model is its weight row, whatever the noise
    torch.testing.assert_close(out["smoothgrad"], W[target].reshape(3, 1, 28, 28), rtol=1e-9, atol=1e-10)


def test_tabular_and_sigmoid_heads(digits, cancer, cancer_sigmoid):
    Xtr, _, Xte, _ = digits
    lin = nn.Linear(64, 10).double()
    X = Xte[:5].double()
    base = Xtr.double().mean(0)
    out = feature_attributions(lin, X, 2, methods=["occlusion"], baseline=base)
    torch.testing.assert_close(out["occlusion"], lin.weight[2].detach() * (X - base), rtol=1e-6, atol=1e-8)
    # a one-output (sigmoid) head explains +logit for class 1 and -logit for class 0
    Xc = cancer[2][:5]
    one = feature_attributions(cancer_sigmoid, Xc, 1, methods=["saliency"])["saliency"]
    zero = feature_attributions(cancer_sigmoid, Xc, 0, methods=["saliency"])["saliency"]
    torch.testing.assert_close(zero, -one)
    assert one.abs().sum() > 0


def _tcav_data(mnist_small):
    """Concept and random sets from the CNN's training images; the 900 images it never saw as inputs."""
    Xtr, ytr, _, _ = mnist_small
    X, y = datasets.load_mnist_small()
    perm = torch.randperm(len(X), generator=torch.Generator().manual_seed(0))   # the fixture's order
    Xte, yte = torch.from_numpy(X)[perm][4100:], torch.from_numpy(y)[perm][4100:]
    randoms = [Xtr[torch.randperm(len(Xtr), generator=torch.Generator().manual_seed(r))[:80]] for r in range(4)]
    return Xtr, ytr, Xte, yte, randoms


def test_tcav_class_concept_and_stroke_concept(mnist_cnn, mnist_small):
    Xtr, ytr, Xte, yte, randoms = _tcav_data(mnist_small)
    layer = "7"                      # the pre-ReLU output of the hidden Linear(256, 32); "9" is the head
    ones = Xtr[ytr == 1][:80]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = tcav(mnist_cnn, layer, ones, randoms, Xte, yte, classes=[1, 7, 9], concept_name="digit 1")
    scores = res.scores.mean(1)
    # a concept that *is* class 1 makes logit 1 grow for nearly every 1, far above the random-CAV null
    assert scores[0] > 0.9 and scores[0] > scores[1:].max()
    assert res.p_values[0] < 0.05 and res.null_scores[0].mean() < 0.7
    assert (res.cav_accuracy > 0.8).all()

    stroke = add_stroke(randoms[0], seed=1)  # the same digits with a horizontal bar: only the stroke differs
    randoms2 = [Xtr[torch.randperm(len(Xtr), generator=torch.Generator().manual_seed(10 + r))[:80]]
                for r in range(4)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        st = tcav(mnist_cnn, layer, stroke, randoms2, Xte, yte, classes=[7, 9], concept_name="stroke")
    assert st.cav_accuracy.mean() > 0.7 and (st.cav_accuracy > 0.6).all()   # the layer represents the stroke
    # sevens are drawn with a horizontal top bar: the stroke direction raises logit 7 for most of them
    assert st.scores[0].mean() > 0.8
    # independent recomputation of every score from the CAV: sign of d logit_k / d activation . v, by autograd
    features, rest = mnist_cnn[:8], mnist_cnn[8:]
    for j, k in enumerate(st.classes):
        act = features(Xte[yte == k]).detach().requires_grad_(True)
        (grad,) = torch.autograd.grad(rest(act)[:, k].sum(), act)
        for r, v in enumerate(torch.as_tensor(st.cavs)):
            fraction = float((grad.double() @ v > 0).double().mean())
            assert abs(fraction - st.scores[j, r]) < 1e-6      # Captum averages in float32
    # each CAV points toward the concept: stroked digits project higher than random digits
    v = torch.as_tensor(st.cavs[0]).float()
    with torch.no_grad():
        assert float((features(stroke) @ v).mean()) > float((features(randoms2[0]) @ v).mean())


def test_missing_captum_and_bad_input(monkeypatch, mnist_cnn, mnist_small):
    X = mnist_small[2][:2]
    with pytest.raises(pc.PrecedentsError, match="Unknown feature attribution method.*'gradcam'"):
        feature_attributions(mnist_cnn, X, methods=["gradcam"])
    with pytest.raises(pc.PrecedentsError, match="at least 2 random sets"):
        tcav(mnist_cnn, "7", X, [X], X, torch.tensor([0, 1]))
    with pytest.raises(pc.PrecedentsError, match="no submodule named 'fc9'"):
        tcav(mnist_cnn, "fc9", X, [X, X], X, torch.tensor([0, 1]))
    monkeypatch.setitem(sys.modules, "captum", None)
    monkeypatch.setitem(sys.modules, "captum.attr", None)
    with pytest.raises(pc.PrecedentsError, match="pip install captum"):
        feature_attributions(mnist_cnn, X, methods=["saliency"])
