"""The Dagster code location: ``dagster dev -w workspace.yaml`` loads ``defs`` from here."""

from bi_pipeline.defs.build import build_defs

defs = build_defs()
