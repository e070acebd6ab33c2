"""Small PNG plots for Dagster metadata (no Dagster): a figure of the common size, and its base64 PNG."""

from __future__ import annotations

import base64
import io


def figure():
    """(fig, ax) on the Agg backend (no display), sized for the Dagster UI's metadata panel."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=(7, 2.6), dpi=80)


def png_base64(fig) -> str:
    """The figure as a base64 PNG (for ``![](data:image/png;base64,…)`` in markdown metadata); closes it."""
    import matplotlib.pyplot as plt

    fig.autofmt_xdate()
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return base64.b64encode(buffer.getvalue()).decode()
