"""Great Expectations plumbing of the `qc` stage: expectation suites from (severity, column,
bounds) rows, and their validation over a table of per-frame or per-drop statistics.

Hard checks fail the drop; soft ones only warn. Kept apart from tasks/qc.py, which decides
what to measure; this module only knows how Great Expectations is driven (imported lazily:
it costs seconds to import).
"""

from __future__ import annotations

import logging
import warnings
from typing import Any

from lam.errors import LamflowError
from lamflow.params import QcParams

HARD = "hard"
SOFT = "soft"


def suite_from_rows(spec: list[tuple[str, str, Any, Any]]) -> list[tuple[str, Any]]:
    """(severity, expectation) pairs from (severity, column, min, max) rows; min = max = True
    means the column must be True, None an open bound."""
    import great_expectations as gx

    e = gx.expectations
    suite: list[tuple[str, Any]] = []
    for severity, col, lo, hi in spec:
        if lo is True:
            suite.append((severity, e.ExpectColumnValuesToBeInSet(column=col, value_set=[True])))
        else:
            exp = e.ExpectColumnValuesToBeBetween(column=col, min_value=lo, max_value=hi)
            suite.append((severity, exp))
    return suite


def frame_suite(params: QcParams, n_classes: int) -> list[tuple[str, Any]]:
    tol = params.record_tolerance
    return suite_from_rows(
        [
            (HARD, "label_decodes", True, True),
            (HARD, "label_size_ok", True, True),
            (HARD, "label_max_id", None, n_classes - 1),
            (HARD, "confidence_decodes", True, True),
            (HARD, "confidence_size_ok", True, True),
            (HARD, "confidence_mean_error", None, tol),
            (HARD, "low_confidence_error", None, tol),
            (HARD, "class_fraction_error", None, tol),
            (HARD, "sha256_ok", True, True),
            (SOFT, "mean_confidence", params.min_mean_confidence, None),
            (SOFT, "low_confidence_fraction", None, params.max_low_confidence_fraction),
            (SOFT, "top_class_fraction", None, params.max_class_fraction),
            (SOFT, "confidence_z", -params.outlier_z, None),
            (SOFT, "low_confidence_z", None, params.outlier_z),
        ]
    )


def drop_suite(params: QcParams, ingested: int) -> list[tuple[str, Any]]:
    import great_expectations as gx

    accounted = gx.expectations.ExpectMulticolumnSumToEqual(
        column_list=["labeled", "quarantined"], sum_total=ingested
    )
    rest = [
        (HARD, "missing", 0, 0),
        (HARD, "extra", 0, 0),
        (HARD, "drift", None, params.max_drift),
        (SOFT, "history_drift", None, params.max_history_drift),
        (SOFT, "absent_seed_classes", 0, 0),
    ]
    return [(HARD, accounted), *suite_from_rows(rest)]


def validate(name: str, rows: list[dict[str, Any]], suite: list[tuple[str, Any]]) -> list[dict]:
    """Run `suite` over `rows` with Great Expectations; one result dict per expectation."""
    import great_expectations as gx
    import pandas as pd
    from great_expectations.data_context.types.base import ProgressBarsConfig

    logging.getLogger("great_expectations").setLevel(logging.WARNING)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        context = gx.get_context(mode="ephemeral")
        context.variables.progress_bars = ProgressBarsConfig(globally=False)
        asset = context.data_sources.add_pandas(name).add_dataframe_asset(f"{name}_stats")
        batch_def = asset.add_batch_definition_whole_dataframe("all")
        gx_suite = context.suites.add(gx.ExpectationSuite(name=f"{name}_suite"))
        for _, exp in suite:
            gx_suite.add_expectation(exp)
        batch = batch_def.get_batch(batch_parameters={"dataframe": pd.DataFrame(rows)})
        result = batch.validate(
            gx_suite,
            result_format={"result_format": "COMPLETE", "unexpected_index_column_names": ["stem"]},
        )
    severity = {_column(exp.configuration.kwargs): sev for sev, exp in suite}
    out = []
    for res in result.results:
        cfg = res.expectation_config
        if cfg is None:
            raise LamflowError(
                f"Great Expectations returned a result without its expectation: {res}"
            )
        column = _column(cfg.kwargs)
        bad = [str(i.get("stem")) for i in (res.result.get("unexpected_index_list") or [])]
        keys = ("min_value", "max_value", "value_set", "sum_total")
        out.append(
            {
                "expectation": cfg.type,
                "column": column,
                "severity": severity.get(column, HARD),
                "success": bool(res.success),
                "unexpected": bad,
                "bounds": {k: cfg.kwargs[k] for k in keys if cfg.kwargs.get(k) is not None},
                "skipped": False,
                "note": "",
            }
        )
    return out


def _column(kwargs: Any) -> str:
    """The column an expectation checks ("A+B" for a multicolumn sum)."""
    if "column" in kwargs:
        return str(kwargs["column"])
    return "+".join(str(c) for c in kwargs.get("column_list", []))
