r"""Koh & Liang's training-set attack (ICML 2017, section 5.2) on real MNIST, 1 vs 7, logistic regression.

Run from the repository root:

    .venv/bin/python docs/training_set_attack.py

Writes ``docs/training_set_attack.html`` (self-contained report: the attacked training image before and after,
the perturbation as a signed map, the test image, the numbers) and ``docs/training_set_attack.md`` (the numbers
and the command). About 2 minutes of CPU time on 2 cores.

Setup: the first 3,000 ones and sevens of the MNIST training split, pixels in [0, 1], flattened; logistic
regression ``nn.Linear(784, 2)`` trained to the exact optimum of ``mean CE + wd/2 ||theta||^2`` (float64 Newton,
``precedents.evaluate.loo``). A correctly classified test point with a modest margin is chosen; ONE training
image (the one whose best perturbation in the L_inf ball raises the test loss most, to first order) is perturbed
by signed steps along ``I_pert,loss`` (``precedents.methods.perturbation``), within ``||delta||_inf <= EPSILON``
and [0, 1], retraining exactly after every step. Its label is not changed.
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

from precedents import InfluenceFunction
from precedents.datasets import binary_subset, load_mnist
from precedents.evaluate import LogisticRegressionRetrainer
from precedents.methods.perturbation import training_set_attack
from precedents.report.html import Case, Example, MethodPanel, Report, Table, write_html

CLASSES = (1, 7)            # label 0 = digit 1, label 1 = digit 7
N_TRAIN = 3000
WEIGHT_DECAY = 1e-4
EPSILON = 0.05              # L_inf radius in pixel units ([0, 1]): about 13 of 255 grey levels
STEPS = 10                  # the main attack
SURVEY_STEPS = 5            # the survey over several test points
N_SURVEY = 8
EPSILON_SWEEP = (0.02, 0.03, 0.05)   # the main test point at other budgets
BAND = (0.6, 0.9)           # "modest margin": probability of the correct label
TARGET_PROB = 0.75          # the main test point: the correctly classified one closest to this
OUT = Path(__file__).resolve().parent


def digit(label: int) -> str:
    return str(CLASSES[int(label)])


def image(x: torch.Tensor) -> np.ndarray:
    return x.detach().to(torch.float64).reshape(28, 28).numpy()


def main() -> int:
    torch.set_num_threads(2)
    t_start = time.perf_counter()
    Xa, ya = binary_subset(*load_mnist("train"), CLASSES)
    Xb, yb = binary_subset(*load_mnist("test"), CLASSES)
    X = torch.tensor(Xa[:N_TRAIN]).reshape(N_TRAIN, -1).to(torch.float64)
    y = torch.tensor(ya[:N_TRAIN])
    Xt = torch.tensor(Xb).reshape(len(Xb), -1).to(torch.float64)
    yt = torch.tensor(yb)

    start = time.perf_counter()
    # exact optimum + Hessian factor; each attack step retrains to the exact optimum again, warm-started at the
    # original optimum, the Newton systems preconditioned by its Hessian
    retrain = LogisticRegressionRetrainer(X, y, 2, WEIGHT_DECAY)
    model = retrain.base_model
    fit_seconds = time.perf_counter() - start

    influence = InfluenceFunction(model, params="head", solver="cg", weight_decay=WEIGHT_DECAY, progress=False,
                                  solver_options={"tol": 1e-8}).fit(X, y)
    with torch.no_grad():
        probs = torch.softmax(model(Xt), 1)
    p_correct = probs[torch.arange(len(yt)), yt]
    accuracy = float((p_correct > 0.5).to(torch.float64).mean())
    with torch.no_grad():
        train_acc = float((model(X).argmax(1) == y).to(torch.float64).mean())
    print(f"logistic regression on {N_TRAIN} MNIST {CLASSES[0]}-vs-{CLASSES[1]} images: gradient norm "
          f"{model.fit_info_['gradient_norm']:.1e}, train accuracy {train_acc:.4f}, test accuracy {accuracy:.4f} "
          f"({len(yt)} test images), {fit_seconds:.1f} s")

    band = torch.nonzero((p_correct > BAND[0]) & (p_correct < BAND[1])).reshape(-1)
    main_j = int(band[(p_correct[band] - TARGET_PROB).abs().argmin()])

    # -- the main attack -------------------------------------------------------------------------------------
    start = time.perf_counter()
    res = training_set_attack(retrain, influence, X, y, Xt[main_j], yt[main_j], epsilon=EPSILON, steps=STEPS)
    attack_seconds = time.perf_counter() - start
    i = res.index
    print(f"test image {main_j} (a {digit(yt[main_j])}): p(correct) {res.test_prob_before:.3f} -> "
          f"{res.test_prob_after:.3f} after perturbing training image {i} (a {digit(y[i])}) by L_inf "
          f"{res.linf:.3f} (L2 {res.l2:.3f}) in {res.steps} step(s) and retraining: "
          f"{'FLIPPED' if res.flipped else 'not flipped'} ({attack_seconds:.1f} s)")

    # controls: the same image, the same L_inf, a random sign pattern / the opposite direction
    def retrained_prob(x_new: torch.Tensor) -> float:
        X_mod = X.clone()
        X_mod[i] = x_new
        with torch.no_grad():
            return float(torch.softmax(retrain(X_mod, y)(Xt[main_j:main_j + 1]), 1)[0, yt[main_j]])

    g = torch.Generator().manual_seed(0)
    random_sign = torch.randint(0, 2, res.original.shape, generator=g).to(torch.float64) * 2 - 1
    p_random = retrained_prob((res.original + EPSILON * random_sign).clamp(0, 1))
    p_opposite = retrained_prob((res.original - EPSILON * torch.sign(res.i_pert)).clamp(0, 1))
    with torch.no_grad():
        p_removed = float(torch.softmax(retrain(torch.arange(N_TRAIN) != i)(Xt[main_j:main_j + 1]), 1)[0, yt[main_j]])

    # removal influence of all training images on the test point, for context
    attribution = influence.attribute(Xt[main_j:main_j + 1], yt[main_j:main_j + 1])
    scores = attribution.scores[0]
    rank = int((scores > scores[i]).sum()) + 1
    top = attribution.top(4)

    # -- the main test point at other budgets ------------------------------------------------------------------
    sweep = []
    for eps in EPSILON_SWEEP:
        r = res if eps == EPSILON else training_set_attack(retrain, influence, X, y, Xt[main_j], yt[main_j],
                                                            epsilon=eps, steps=STEPS)
        sweep.append((eps, r))
        print(f"  epsilon {eps}: p(correct) {r.test_prob_after:.3f} after {r.steps} step(s), training image "
              f"{r.index}: {'flipped' if r.flipped else 'not flipped'}")

    # -- survey: several test points in the band ------------------------------------------------------------
    order = band[torch.argsort(p_correct[band])]
    pick = order[torch.unique(torch.linspace(0, len(order) - 1, N_SURVEY).round().long())]
    survey = []
    for j in pick.tolist():
        start = time.perf_counter()
        r = training_set_attack(retrain, influence, X, y, Xt[j], yt[j], epsilon=EPSILON, steps=SURVEY_STEPS)
        survey.append((j, r, time.perf_counter() - start))
        print(f"  survey: test {j} (a {digit(yt[j])}) p(correct) {r.test_prob_before:.3f} -> {r.test_prob_after:.3f}"
              f" train {r.index} (a {digit(r.label)}), L_inf {r.linf:.3f}, {r.steps} step(s): "
              f"{'flipped' if r.flipped else 'not flipped'}")
    n_flipped = sum(r.flipped for _, r, _ in survey)
    total_seconds = time.perf_counter() - t_start

    # -- report ------------------------------------------------------------------------------------------
    summary = Table(
        "The attack on the main test point",
        ["quantity", "trained on the original set", "retrained after the attack"],
        [["test loss (nats, correct label)", res.test_loss_before, res.test_loss_after],
         ["p(correct label)", res.test_prob_before, res.test_prob_after],
         ["prediction", digit(res.test_pred_before), digit(res.test_pred_after)],
         ["test-loss change, first-order prediction I_pert . delta / n", 0.0, res.predicted_change],
         ["test-loss change, actual (exact retraining)", 0.0, res.actual_change],
         ["perturbation L_inf (pixels in [0, 1]; budget epsilon)", 0.0, res.linf],
         ["perturbation L2", 0.0, res.l2],
         ["pixels changed", 0, int((res.perturbation.abs() > 1e-12).sum())]],
        caption=f"Test image {main_j} (a {digit(yt[main_j])}), training image {i} (a {digit(y[i])}, label kept), "
                f"epsilon {EPSILON}, {res.steps} of at most {STEPS} signed steps of {res.step_size:.4g}, exact "
                f"retraining after each step. n = {N_TRAIN}, weight decay {WEIGHT_DECAY:g}.")
    steps_table = Table(
        "Each step (the model retrained exactly after it)",
        ["step", "test loss", "p(correct)", "prediction", "L_inf", "L2"],
        [[int(h["step"]), h["test_loss"], h["test_prob"], digit(h["pred"]), h["linf"], h["l2"]]
         for h in res.history])
    controls = Table(
        "Controls: the same training image changed otherwise, then retrained",
        ["change to training image " + str(i), "p(correct) of the test point after retraining"],
        [["none (original model)", res.test_prob_before],
         [f"the attack (signed steps along +I_pert, L_inf {res.linf:.3g})", res.test_prob_after],
         [f"random signs, +-{EPSILON} (clipped to [0, 1])", p_random],
         [f"one step along -sign(I_pert), {EPSILON} (clipped)", p_opposite],
         ["removed from the training set", p_removed]],
        caption=f"Training image {i} ranks {rank} of {N_TRAIN} by removal influence (I_up,loss) on this test point "
                f"(score {float(scores[i]):+.4g} nats).")
    sweep_table = Table(
        f"Test image {main_j} at other budgets epsilon (at most {STEPS} steps of max(2.5 epsilon / {STEPS}, "
        "epsilon / 4))",
        ["epsilon", "training image attacked", "steps", "L_inf", "L2", "p(correct) after", "prediction after",
         "flipped"],
        [[eps, r.index, r.steps, r.linf, r.l2, r.test_prob_after, digit(r.test_pred_after),
          "yes" if r.flipped else "no"] for eps, r in sweep],
        caption=f"p(correct) before: {res.test_prob_before:.4g}.")
    survey_table = Table(
        f"Survey: {len(survey)} correctly classified test points with p(correct) in {BAND}, at most {SURVEY_STEPS} "
        f"steps, epsilon {EPSILON}",
        ["test image", "digit", "p(correct) before", "p(correct) after", "flipped", "training image attacked",
         "its digit", "steps", "L_inf", "predicted loss change", "actual loss change"],
        [[j, digit(yt[j]), r.test_prob_before, r.test_prob_after, "yes" if r.flipped else "no", r.index,
          digit(r.label), r.steps, r.linf, r.predicted_change, r.actual_change] for j, r, _ in survey],
        caption=f"{n_flipped} of {len(survey)} flipped. The test points are spread evenly over the band by p(correct).")

    def train_example(k: int, score: float) -> Example:
        with torch.no_grad():
            pred = int(model(X[k:k + 1]).argmax(1)[0])
        return Example(int(k), digit(y[k]), digit(pred), score, image(X[k]))

    panel = MethodPanel(
        "influence (removal, I_up,loss) on this test point, original model",
        [train_example(int(k), float(s)) for k, s in zip(top.positive_indices[0], top.positive_scores[0],
                                                         strict=True)],
        [train_example(int(k), float(s)) for k, s in zip(top.negative_indices[0], top.negative_scores[0],
                                                         strict=True)],
        note="score = predicted increase of the test loss (nats) if that training image were removed")
    case = Case(
        f"Test image {main_j}: p({digit(yt[main_j])}) {res.test_prob_before:.3f} -> {res.test_prob_after:.3f} "
        f"after perturbing one training image by L_inf {res.linf:.3g}",
        Example(main_j, digit(yt[main_j]), digit(res.test_pred_before), None, image(Xt[main_j]),
                caption=f"after the attack: predicted {digit(res.test_pred_after)}"),
        [panel],
        extra_images=[(f"training image {i} (a {digit(y[i])}) before", image(res.original)),
                      (f"training image {i} after (label kept: {digit(y[i])})", image(res.perturbed)),
                      (f"perturbation (blue -, red +; max {res.linf:.3g})", image(res.perturbation)),
                      ("I_pert at the original model (sign = the step)", image(res.i_pert))])
    intro = (
        f"Koh & Liang (ICML 2017, section 5.2): perturb ONE training image, keeping its label, so that the model "
        f"retrained on the modified training set misclassifies a chosen test image. The step direction is "
        f"I_pert,loss = -grad_theta L(z_test)^T H^-1 grad_x grad_theta L(z), the gradient of the test loss after "
        f"retraining with respect to the training input (times n): the image moves by signed steps along +I_pert "
        f"(raising the test loss of the correct label), projected onto an L_inf ball of radius {EPSILON} and onto "
        f"[0, 1], and the model is retrained exactly after every step.\n\n"
        f"Data: the first {N_TRAIN} ones and sevens of the MNIST training split (pixels in [0, 1]); model: "
        f"logistic regression nn.Linear(784, 2) at the exact optimum of mean cross-entropy + "
        f"{WEIGHT_DECAY:g}/2 ||theta||^2 (float64 Newton, gradient norm {model.fit_info_['gradient_norm']:.1e}); "
        f"test accuracy {accuracy:.4f} on the {len(yt)} ones and sevens of the MNIST test split. "
        f"Command: .venv/bin/python docs/training_set_attack.py ({total_seconds:.0f} s on this machine).")
    report = Report("Training-set attack with perturbation influence (Koh & Liang), MNIST 1 vs 7", intro,
                    [summary, steps_table, controls, sweep_table, survey_table], [case],
                    footer="precedents: src/precedents/methods/perturbation.py")
    write_html(report, OUT / "training_set_attack.html")

    md = [
        "# Training-set attack with perturbation influence (Koh & Liang 2017, section 5.2)",
        "",
        "```bash",
        ".venv/bin/python docs/training_set_attack.py    # writes docs/training_set_attack.{html,md}",
        "```",
        "",
        f"Real data: the first {N_TRAIN} ones and sevens of the MNIST training split (`precedents.datasets."
        f"load_mnist`, `binary_subset`), pixels in [0, 1]. Model: logistic regression `nn.Linear(784, 2)` trained to "
        f"the exact optimum of mean cross-entropy + {WEIGHT_DECAY:g}/2 ||theta||^2 (float64 Newton, "
        f"`precedents.evaluate.loo`; gradient norm {model.fit_info_['gradient_norm']:.1e}); train accuracy "
        f"{train_acc:.4f}, test accuracy {accuracy:.4f} on the {len(yt)} ones and sevens of the MNIST test split.",
        "",
        "Attack (`precedents.methods.perturbation.training_set_attack`): one training image, its label kept, moved "
        "by signed steps along +I_pert,loss = -grad_theta L(z_test)^T H^-1 grad_x grad_theta L(z) (raises the "
        f"test loss of the correct label), projected onto ||delta||_inf <= {EPSILON} (about {EPSILON * 255:.0f} of "
        "255 grey levels) and [0, 1]; exact retraining and a fresh I_pert after each step; it stops when the "
        "retrained model's prediction flips. The training image is the one whose best first-order perturbation in "
        "that box raises the test loss most.",
        "",
        f"## Main test point: test image {main_j} (a {digit(yt[main_j])})",
        "",
        "| quantity | original model | retrained after the attack |",
        "|---|---|---|",
        f"| test loss (nats) | {res.test_loss_before:.4f} | {res.test_loss_after:.4f} |",
        f"| p(correct label) | {res.test_prob_before:.4f} | {res.test_prob_after:.4f} |",
        f"| prediction | {digit(res.test_pred_before)} | {digit(res.test_pred_after)} |",
        "",
        f"Training image {i} (a {digit(y[i])}; removal influence on this test point {float(scores[i]):+.4g} nats, "
        f"rank {rank} of {N_TRAIN} from the most positive) "
        f"perturbed by L_inf {res.linf:.4f}, L2 {res.l2:.4f}, {int((res.perturbation.abs() > 1e-12).sum())} "
        f"pixels changed, in {res.steps} step(s) of {res.step_size:.4g}: "
        f"**{'the prediction flipped' if res.flipped else 'the prediction did not flip'}**. "
        f"Test-loss change: first-order prediction I_pert . delta / n = {res.predicted_change:+.4f} nats "
        f"(at the original model), actual after exact retraining {res.actual_change:+.4f} nats.",
        "",
        f"Controls on the same training image (p(correct) of the test image after retraining): random signs "
        f"+-{EPSILON} {p_random:.4f}; one step along -sign(I_pert) {p_opposite:.4f}; image removed {p_removed:.4f}; "
        f"original {res.test_prob_before:.4f}.",
        "",
        f"## Test image {main_j} at other budgets (at most {STEPS} steps)",
        "",
        "| epsilon | training image | steps | L_inf | L2 | p(correct) after | prediction after | flipped |",
        "|---|---|---|---|---|---|---|---|",
        *[f"| {eps} | {r.index} | {r.steps} | {r.linf:.4f} | {r.l2:.4f} | {r.test_prob_after:.4f} | "
          f"{digit(r.test_pred_after)} | {'yes' if r.flipped else 'no'} |" for eps, r in sweep],
        "",
        f"## Survey: {len(survey)} test points with p(correct) in {BAND}, at most {SURVEY_STEPS} steps, "
        f"epsilon {EPSILON}",
        "",
        "| test image | digit | p(correct) before | after | flipped | training image | its digit | steps | L_inf "
        "| predicted loss change | actual |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    md += [f"| {j} | {digit(yt[j])} | {r.test_prob_before:.4f} | {r.test_prob_after:.4f} | "
           f"{'yes' if r.flipped else 'no'} | {r.index} | {digit(r.label)} | {r.steps} | {r.linf:.4f} | "
           f"{r.predicted_change:+.4f} | {r.actual_change:+.4f} |" for j, r, _ in survey]
    md += ["", f"{n_flipped} of {len(survey)} flipped. Steps of {survey[0][1].step_size:.4g} here (2.5 epsilon / "
           f"{SURVEY_STEPS}), so test image {main_j} ends differently than with the main attack's {res.step_size:.4g}. "
           "'predicted' is the first-order change I_pert . delta / n with I_pert of the original model; the actual "
           "change after exact retraining differs from it by up to about a factor 2 at these sizes: the retrained "
           "test loss is not linear in delta this far (the attack itself recomputes I_pert after every step).", "",
           f"Total {total_seconds:.0f} s (2 CPU threads, torch {torch.__version__}). The report with the images: "
           "`docs/training_set_attack.html`.", ""]
    (OUT / "training_set_attack.md").write_text("\n".join(md), encoding="utf-8")
    print(f"wrote {OUT / 'training_set_attack.html'} and {OUT / 'training_set_attack.md'} "
          f"({total_seconds:.0f} s)")
    return 0 if math.isfinite(res.test_loss_after) else 1


if __name__ == "__main__":
    sys.exit(main())
