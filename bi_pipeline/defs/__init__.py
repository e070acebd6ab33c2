"""Dagster wiring: one module per stage. The logic lives in the plain-Python modules of ``bi_pipeline``."""

import warnings

import dagster as dg

# BackfillPolicy is marked beta in Dagster 1.13; it is pinned and tested here, so the warning is noise for users.
warnings.filterwarnings("ignore", message=".*backfill_policy.*", category=dg.BetaWarning)
