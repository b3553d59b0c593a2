"""Report tables for transparent models, feature counterfactuals, flip sets and unlearning (seed 004).

One entry point for the report builder and the CLI: :func:`transparency_tables` turns any mix of
:class:`~precedents.glassbox.GlassboxComparison`, :class:`~precedents.counterfactual.CounterfactualResult`,
:class:`~precedents.evaluate.flipset.FlipSets`, :class:`~precedents.evaluate.flipset.FlipSetResult` and
:class:`~precedents.evaluate.flipset.UnlearningResult` into :class:`~precedents.report.html.Table` s, in order.
"""

from __future__ import annotations

from typing import Any

from .._validation import PrecedentsError
from .html import Table

__all__ = ["transparency_tables"]


def transparency_tables(*results: Any) -> list[Table]:
    """The tables of each result, in the order given (each result type knows its own tables)."""
    from ..counterfactual import CounterfactualResult
    from ..evaluate.flipset import FlipSetResult, FlipSets, UnlearningResult
    from ..glassbox import GlassboxComparison

    tables: list[Table] = []
    n_cf = sum(isinstance(r, CounterfactualResult) for r in results)
    k_cf = 0
    for result in results:
        if isinstance(result, (GlassboxComparison, FlipSets)):
            tables += result.report_tables()
        elif isinstance(result, CounterfactualResult):
            k_cf += 1
            tables.append(result.report_table(f"Counterfactual explanations ({k_cf})" if n_cf > 1
                                              else "Counterfactual explanations"))
        elif isinstance(result, FlipSetResult):
            tables += FlipSets([result], max(len(result.indices), 1)).report_tables()[1:]
        elif isinstance(result, UnlearningResult):
            tables.append(result.report_table())
        else:
            raise PrecedentsError(f"No report tables for a {type(result).__name__}.")
    return tables
