"""Instance- versus class-level explanations (Sui et al. 2021's critique of RPS-l2), measured."""

from __future__ import annotations

import itertools

import torch

from ..attribution import TopK


def topk_jaccard(top: TopK, groups: torch.Tensor, kind: str = "positive") -> dict[str, float]:
    """Mean pairwise Jaccard similarity of the top-k training sets of test points in the same group.

    ``groups`` (n_test,) is usually the predicted class. 1.0 means every test point of a class gets the same
    precedents (a class-level explanation); near 0 means each gets its own (instance-level). Returns the mean
    over all same-group pairs (``"mean"``), the number of pairs, and the mean per group (``"group <g>"``).
    """
    indices = top.positive_indices if kind == "positive" else top.negative_indices
    sets = [set(row.tolist()) for row in indices]
    out: dict[str, float] = {}
    all_pairs: list[float] = []
    for g in sorted(set(groups.tolist())):
        members = (groups == g).nonzero().flatten().tolist()
        values = [len(sets[a] & sets[b]) / len(sets[a] | sets[b]) for a, b in itertools.combinations(members, 2)]
        if values:
            out[f"group {g}"] = sum(values) / len(values)
            all_pairs.extend(values)
    out["mean"] = sum(all_pairs) / len(all_pairs) if all_pairs else float("nan")
    out["pairs"] = float(len(all_pairs))
    return out


def topk_agreement(a: TopK, b: TopK, kind: str = "positive") -> float:
    """Mean Jaccard similarity between two methods' (or settings') top-k sets for the same test points."""
    rows_a = a.positive_indices if kind == "positive" else a.negative_indices
    rows_b = b.positive_indices if kind == "positive" else b.negative_indices
    values = [len(set(x.tolist()) & set(z.tolist())) / len(set(x.tolist()) | set(z.tolist()))
              for x, z in zip(rows_a, rows_b, strict=True)]
    return sum(values) / len(values)
