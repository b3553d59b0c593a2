"""The command line's arguments: one parser, one sub-parser per command, each option checked as it is read."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable, Sequence
from typing import NoReturn

from . import methods

__all__ = ["build_parser"]

DESCRIPTION = ("precedents: explain a classifier's predictions by the training examples behind them. "
               "Commands: demo, explain, evaluate, debug.")


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line, ``<prog>: error: <message>``, exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


# -- option types: each rejects a bad value with a message argparse prints in its one line -----------------
def _number(kind: Callable[[str], float], test: Callable[[float], bool], what: str) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None
        if isinstance(value, float) and not math.isfinite(value) or not test(value):
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}")
        return value

    parse.__name__ = what
    return parse


finite_float = _number(float, lambda v: True, "a finite number")
nonneg_float = _number(float, lambda v: v >= 0, "a finite number >= 0")
positive_float = _number(float, lambda v: v > 0, "a finite number > 0")
positive_int = _number(int, lambda v: v >= 1, "an integer >= 1")
nonneg_int = _number(int, lambda v: v >= 0, "an integer >= 0")


def key_list(choices: Sequence[str], what: str = "method") -> Callable[[str], list[str]]:
    """``a,b,c`` as a list: each in ``choices``, none twice, at least one."""
    def parse(text: str) -> list[str]:
        keys = [k.strip() for k in text.split(",") if k.strip()]
        unknown = [k for k in keys if k not in choices]
        if unknown or not keys:
            raise argparse.ArgumentTypeError(f"Unknown {what}(s) {', '.join(unknown) or '(none given)'}; choose "
                                             f"from {', '.join(choices)}")
        if len(set(keys)) != len(keys):
            raise argparse.ArgumentTypeError(f"a {what} is named twice in {text!r}")
        return keys

    parse.__name__ = f"{what} list"
    return parse


def feature_list(text: str) -> list[str]:
    """``--features saliency,ig``: names from precedents.features.FEATURE_METHODS; '' for none."""
    from ..features import FEATURE_METHODS

    return key_list(list(FEATURE_METHODS), "feature attribution method")(text) if text.strip() else []


def index_list(text: str) -> list[int]:
    """``--points 0,3,7``: test indices, each >= 0, none twice."""
    try:
        points = [int(p) for p in text.split(",") if p.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of test indices") from None
    if not points or min(points) < 0 or len(set(points)) != len(points):
        raise argparse.ArgumentTypeError(f"{text!r}: give distinct test indices >= 0, e.g. 0,1,2")
    return points


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument("--debug", action="store_true", help="on an error, show the full traceback")


def _model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", help="TorchScript file")
    parser.add_argument("--state-dict", help="state dict file (with --module)")
    parser.add_argument("--module", help="package.module:ClassName of the model (with --state-dict)")
    parser.add_argument("--module-kwargs", default="{}", help="JSON keyword arguments for the model class")


def build_parser() -> argparse.ArgumentParser:
    from .demo import DEMO_TASKS

    prog = "precedents"
    parser = Parser(prog=prog, description=DESCRIPTION)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)

    demo = sub.add_parser("demo", help="explain a model trained on real data; writes out/demo/report.html")
    demo.add_argument("--task", choices=sorted(DEMO_TASKS), default="mnist",
                      help="; ".join(f"{name}: {what}" for name, (what, _) in sorted(DEMO_TASKS.items())))
    demo.add_argument("--out", default=None, help="output folder (default out/demo, or out/demo-TASK)")
    demo.add_argument("--cache", default=None, help="cache directory (default $PRECEDENTS_CACHE or .cache/precedents)")
    demo.add_argument("--k", type=positive_int, default=5, help="precedents shown per sign")
    demo.add_argument("--features", type=feature_list, default=None, help="feature attribution methods to show, "
                      "comma-separated (default for mnist: saliency,smoothgrad,ig,occlusion,lime; '' for none)")
    demo.add_argument("--no-tcav", dest="tcav", action="store_false", help="skip the TCAV table")
    demo.add_argument("--explorer-points", type=nonneg_int, default=None,
                      help="mnist: test images in the explorer bundle that `precedents serve OUT` opens (default "
                           "500; 0 for none)")
    _common(demo)

    ex = sub.add_parser("explain", help="explain your own model on your own data")
    _model_arguments(ex)
    ex.add_argument("--xgboost", help="XGBoost model file (.json or .ubj) instead of a torch model")
    ex.add_argument("--lightgbm", help="LightGBM model file (.txt) instead of a torch model")
    ex.add_argument("--label", help="label column of the --train/--test tables (tree models)")
    ex.add_argument("--train", required=True, help=".npz or .pt with X and y; .csv or .parquet with a tree model")
    ex.add_argument("--test", required=True, help=".npz or .pt with X (and y, optional)")
    ex.add_argument("--layer", default=None, help="dotted name of the final nn.Linear (default: the last one)")
    ex.add_argument("--methods", type=key_list(methods.KEYS), default=None,
                    help=f"comma-separated, from: {', '.join(methods.KEYS)} (default rps-l2,rps-lje; tree models: "
                    "rps-lje and head influence)")
    ex.add_argument("--l2", type=positive_float, default=None, help="rps-l2 regularisation (default 0.003)")
    ex.add_argument("--step", type=positive_float, default=None, help="rps-lje anchor step (default 0.01; tree "
                    "models: 1e-4)")
    ex.add_argument("--damping", type=nonneg_float, default=None,
                    help="rps-lje and influence damping (default: each method's own, e.g. rps-lje 'auto'; tree "
                    "models: 1e-3 x lambda_max)")
    ex.add_argument("--k", type=positive_int, default=5, help="precedents shown per sign")
    ex.add_argument("--points", type=index_list, default=None, help="comma-separated test indices to show "
                    "(default 0-3)")
    ex.add_argument("--overlap", type=nonneg_int, default=200,
                    help="test points for the top-k overlap table (0: skip)")
    ex.add_argument("--out", default="out/explain", help="output folder (created; refused if it holds other files)")
    ex.add_argument("--explorer-points", type=nonneg_int, default=500,
                    help="torch models: test points (the first N) in the explorer bundle that `precedents serve OUT` "
                         "opens (default 500; 0 for none; it costs one attribution per class per method)")
    ex.add_argument("--features", type=feature_list, default=[], help="feature attribution beside the precedents, "
                    "comma-separated from saliency,smoothgrad,ig,occlusion,lime (needs captum; default: none)")
    ex.add_argument("--no-sensitivity", dest="sensitivity", action="store_false",
                    help="image inputs: skip the sensitivity-map decomposition figure")
    ex.add_argument("--tcav", default=None, help=".npz/.pt with X: example inputs of a concept (TCAV table)")
    ex.add_argument("--tcav-layer", default=None, help="module whose output holds the activations for --tcav")
    _common(ex)

    ev = sub.add_parser("evaluate", help="compare attribution methods with leave-one-out retraining (the truth)")
    _model_arguments(ev)
    ev.add_argument("--train", required=True, help=".npz or .pt with X and y")
    ev.add_argument("--test", required=True, help=".npz or .pt with X and y (labels required)")
    ev.add_argument("--methods", type=key_list(methods.KEYS), default=["influence-exact", "rps-l2"],
                    help=f"comma-separated, from: {', '.join(methods.KEYS)} (default influence-exact,rps-l2)")
    ev.add_argument("--weight-decay", type=nonneg_float, required=True,
                    help="L2 strength the model was trained with (objective mean loss + wd/2 ||theta||^2)")
    ev.add_argument("--damping", type=nonneg_float, default=0.0)
    ev.add_argument("--params", choices=["head", "all"], default="head",
                    help="parameters for influence and grad-* (head: the final nn.Linear)")
    ev.add_argument("--layer", default=None, help="dotted name of the final nn.Linear (default: the last one)")
    ev.add_argument("--l2", type=positive_float, default=None, help="rps-l2 regularisation (default weight_decay / 2)")
    ev.add_argument("--step", type=positive_float, default=0.01, help="rps-lje anchor step")
    ev.add_argument("--points", type=positive_int, default=100, help="training examples to leave out, one at a time")
    ev.add_argument("--test-points", type=positive_int, default=5, help="test points (those with the highest loss)")
    ev.add_argument("--retrain", choices=["warm", "logistic"], default="warm")
    ev.add_argument("--steps", type=nonneg_int, default=1000, help="--retrain warm: SGD steps")
    ev.add_argument("--lr", type=positive_float, default=0.01, help="--retrain warm: learning rate")
    ev.add_argument("--results", required=True, help="JSON-lines file of finished retrains (a rerun resumes)")
    ev.add_argument("--out", default="out/evaluate", help="output folder (created; refused if it holds other files)")
    ev.add_argument("--seed", type=nonneg_int, default=0)
    _common(ev)

    from ..evaluate.mislabel import self_score_methods

    self_scores = self_score_methods()          # the registered methods, then the baselines (loss, random)

    db = sub.add_parser("debug", help="rank training labels to check first (mislabel detection); fix and retrain")
    _model_arguments(db)
    db.add_argument("--train", required=True, help=".npz or .pt with X and y (the labels to check)")
    db.add_argument("--test", default=None, help=".npz or .pt with X and y: test accuracy after --corrections")
    db.add_argument("--methods", type=key_list(self_scores, "self-score method"),
                    default=["rps-l2", "rps-lje", "influence-cg", "loss"],
                    help=f"comma-separated, from: {', '.join(self_scores)} (default rps-l2,rps-lje,influence-cg,loss)")
    db.add_argument("--top", type=positive_int, default=100, help="examples in the review list")
    db.add_argument("--weight-decay", type=nonneg_float, default=0.0,
                    help="L2 the model was trained with (mean loss + wd/2 ||theta||^2): influence, head refit")
    db.add_argument("--l2", type=positive_float, default=None,
                    help="rps-l2 lambda (default wd / 2, or 0.003 if wd is 0)")
    db.add_argument("--damping", type=nonneg_float, default=0.0, help="influence and rps-lje damping")
    db.add_argument("--params", choices=["head", "all"], default="head", help="parameters for influence")
    db.add_argument("--layer", default=None, help="dotted name of the final nn.Linear (default: the last one)")
    db.add_argument("--checkpoints", default=None, help="tracin: comma-separated state-dict files (default: "
                    "the final weights only)")
    db.add_argument("--corrections", default=None, help="CSV with header index,label: fix, refit the last layer, "
                    "report the test accuracy change")
    db.add_argument("--out", default="out/debug", help="output folder (created; refused if it holds other files)")
    db.add_argument("--seed", type=nonneg_int, default=0, help="seed of 'random' and of the stochastic solvers")
    _common(db)

    from ..serve.command import add_arguments as serve_arguments

    sv = sub.add_parser("serve", help="local web explorer over what demo/explain wrote to DIR")
    serve_arguments(sv)
    sv.add_argument("--debug", action="store_true", help="show the traceback of an error")
    return parser

