"""Alerts: anomalies against the published band, a store that stopped reporting, a failed period, a degraded
champion; delivered once each to a webhook (a local HTTP server as the sink)."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pandas as pd
import pytest

from bi_pipeline.decisions.alerts import (
    bad_periods,
    combine,
    deliver,
    demand_anomalies,
    model_accuracy,
    stopped_reporting,
)
from bi_pipeline.forecasting.live import LiveEvidence
from bi_pipeline.forecasting.metrics import QUANTILES, quantile_column

WEEKS = pd.to_datetime(["2024-01-01", "2024-01-08", "2024-01-15"])


def publication(cutoff: str, version: str, dates, p10: float, p50: float, p90: float) -> pd.DataFrame:
    rows = []
    for item in ("A", "B", "C"):
        for date in dates:
            values = {quantile_column(q): p10 + (p90 - p10) * (q - 0.1) / 0.8 for q in QUANTILES}
            values["q0.5"] = p50
            rows.append({"store_id": "S1", "item_id": item, "date": date, "mean": p50, **values})
    frame = pd.DataFrame(rows)
    frame["cutoff"], frame["model_version"] = pd.Timestamp(cutoff), version
    return frame


def history(sales: dict[tuple[str, str, pd.Timestamp], float]) -> pd.DataFrame:
    rows = [{"store_id": s, "item_id": i, "date": d, "sales": v, "observed": True} for (s, i, d), v in sales.items()]
    return pd.DataFrame(rows)


def test_actuals_outside_the_newest_band_are_anomalies_sized_in_units_and_money():
    # The older publication's band (0–10) would flag everything; the newer one (90–110) is the one that counts.
    archive = pd.concat(
        [publication("2023-12-25", "1", WEEKS[:2], 0, 5, 10), publication("2024-01-01", "2", WEEKS[1:], 90, 100, 110)]
    )
    actuals = history(
        {
            ("S1", "A", WEEKS[0]): 100.0,
            ("S1", "A", WEEKS[1]): 105.0,  # inside 90–110
            ("S1", "B", WEEKS[1]): 140.0,  # 30 above P90: more than the band's width of 20
            ("S1", "C", WEEKS[1]): 85.0,  # 5 below P10
        }
    )
    out = demand_anomalies(archive, actuals, periods=1, unit_price=pd.Series({"B": 2.5}))
    assert out["item_id"].tolist() == ["B", "C"]
    assert out["units"].tolist() == [30.0, 5.0]
    assert out["severity"].tolist() == ["high", "medium"]
    assert out["money"].iloc[0] == 75.0 and pd.isna(out["money"].iloc[1])
    assert (out["forecast_version"] == "2").all() and (out["period"] == WEEKS[1]).all()
    assert out["message"].iloc[0] == (
        "S1 / B sold 140 in the period of 2024-01-08, 30 above the forecast's P90 of 110 (P50 100; v2, cutoff "
        "2024-01-01), 75 in money."
    )
    # The same anomaly found again has the same id.
    assert demand_anomalies(archive, actuals, periods=1)["alert_id"].tolist() == out["alert_id"].tolist()


def test_a_store_that_stopped_reporting_raises_one_alert():
    sales = {(s, i, d): 1.0 for s in ("S1", "S2") for i in ("A", "B") for d in WEEKS[:2]}
    sales.update({("S1", "A", WEEKS[2]): 1.0})
    out = stopped_reporting(history(sales))
    assert out["store_id"].tolist() == ["S2"] and out["severity"].tolist() == ["high"]
    assert out["message"].iloc[0] == (
        "store S2 reported no sales for the period of 2024-01-15; it reported 2 series the period before."
    )


def test_a_period_over_the_bad_row_limit_and_a_degraded_champion_raise_alerts():
    out = bad_periods({"2024-01-01": (1, 100), "2024-01-08": (10, 100)}, 0.05)
    assert out["period"].tolist() == [pd.Timestamp("2024-01-08")] and out["units"].tolist() == [10.0]
    assert "10 of 100 rows quarantined (10.0%, over the limit of 5.0%)" in out["message"].iloc[0]
    degraded = model_accuracy(LiveEvidence("3", 6, 1.5, 0.05), 1.0, 0.25, 4)
    assert degraded["kind"].tolist() == ["model_accuracy"] and degraded["forecast_version"].tolist() == ["3"]
    # Too few periods, or too noisy to be sure: no alert.
    assert model_accuracy(LiveEvidence("3", 3, 1.5, 0.05), 1.0, 0.25, 4).empty
    assert model_accuracy(LiveEvidence("3", 6, 1.5, 0.2), 1.0, 0.25, 4).empty


class Sink:
    """A local HTTP server that records every JSON body POSTed to it."""

    def __init__(self, status: int = 200) -> None:
        self.bodies: list[dict] = []
        self.status = status
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's name
                length = int(self.headers["Content-Length"])
                sink.bodies.append(json.loads(self.rfile.read(length)))
                self.send_response(sink.status)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = HTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/alerts"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def sink():
    server = Sink()
    yield server
    server.close()


def test_each_alert_is_delivered_once(tmp_path, sink):
    first = combine(
        [bad_periods({"2024-01-08": (10, 100)}, 0.05), model_accuracy(LiveEvidence("3", 6, 1.5, 0.05), 1.0, 0.25, 4)]
    )
    state = tmp_path / "state" / "alerts_sent.json"
    assert deliver(first, sink.url, state) == (2, None)
    assert [a["kind"] for a in sink.bodies[0]["alerts"]] == ["bad_row_rate", "model_accuracy"]
    assert sink.bodies[0]["alerts"][0]["period"] == "2024-01-08" and sink.bodies[0]["alerts"][0]["money"] is None
    # A second run finds the same alerts: nothing is sent.
    assert deliver(first, sink.url, state) == (0, None) and len(sink.bodies) == 1
    # A new alert beside them: only it is sent.
    second = combine([first, bad_periods({"2024-01-15": (20, 100)}, 0.05)])
    assert deliver(second, sink.url, state) == (1, None)
    assert [a["period"] for a in sink.bodies[1]["alerts"]] == ["2024-01-15"]


def test_an_unreachable_or_refusing_sink_keeps_the_alerts_for_the_next_run(tmp_path):
    alerts = bad_periods({"2024-01-08": (10, 100)}, 0.05)
    state = tmp_path / "alerts_sent.json"
    refusing = Sink(status=503)
    try:
        sent, error = deliver(alerts, refusing.url, state)
    finally:
        refusing.close()
    assert sent == 0 and "503" in error
    sent, error = deliver(alerts, "http://127.0.0.1:9/closed", state)
    assert sent == 0 and "could not be reached" in error
    working = Sink()
    try:
        assert deliver(alerts, working.url, state) == (1, None)
    finally:
        working.close()
