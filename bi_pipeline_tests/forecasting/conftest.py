"""Fixtures the forecasting tests share."""

from __future__ import annotations

import pytest

from bi_pipeline.forecasting.features import fit_spec
from bi_pipeline.forecasting.panel import Panel, build_panel
from bi_pipeline_tests.forecasting.helpers import weekly_history


@pytest.fixture
def panel() -> Panel:
    """Six weekly series of 90 periods with a holiday flag and a store attribute, and 8 periods after them."""
    history = weekly_history()
    return build_panel(history, fit_spec(history, "W"), horizon=8)
