"""The Grafana and Prometheus deploy files are well formed and consistent with each other.

Whether the metrics they use are really exported is checked end to end
(tests/e2e/test_observability.py); promtool checks and unit-tests the rules in CI.
"""

from __future__ import annotations

import json

import yaml

from tests.support.observability_catalogue import (
    DASHBOARDS,
    GRAFANA,
    PROMETHEUS,
    dashboard_metrics,
    dashboard_panels,
    metric_names,
    referenced_metrics,
    rules,
    runnable_services,
    sample_names,
    scrape_jobs,
)


def test_metric_names_are_parsed_out_of_promql() -> None:
    expr = (
        "histogram_quantile(0.99, sum by (le, stage) ("
        "rate(residuals_pipeline_latency_seconds_bucket"
        '{stage="ledger", job=~"a|b"}[$__rate_interval]))) / '
        "clamp_min(sum(rate(x_total[5m])), 1e-9)"
        " > on (job) group_left up and topk(10, increase(y_total[$__range]))"
    )
    assert metric_names(expr) == {
        "residuals_pipeline_latency_seconds_bucket",
        "x_total",
        "up",
        "y_total",
    }
    assert metric_names("sum without (instance) (foo)") == {"foo"}


def test_sample_names_ignore_help_and_type_lines() -> None:
    text = (
        "# HELP a_total A.\n# TYPE a_total counter\n"
        'a_total{kind="x"} 1.0\nb_bucket{le="+Inf"} 3\n# TYPE c gauge\n'
    )
    assert sample_names(text) == {"a_total", "b_bucket"}


def test_dashboards_are_provisioned_with_the_provisioned_datasource() -> None:
    datasources = yaml.safe_load(
        (GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text()
    )["datasources"]
    uids = {d["uid"] for d in datasources}
    provider = yaml.safe_load(
        (GRAFANA / "provisioning" / "dashboards" / "residuals.yml").read_text()
    )["providers"][0]
    assert provider["type"] == "file" and provider["options"]["path"]
    assert len(DASHBOARDS) >= 2
    seen_uids = set()
    for path in DASHBOARDS:
        dashboard = json.loads(path.read_text())
        assert dashboard["uid"] not in seen_uids
        seen_uids.add(dashboard["uid"])
        ids = [p["id"] for p in dashboard["panels"]]
        assert len(ids) == len(set(ids)), f"{path.name}: duplicate panel ids"
    for name, panel in dashboard_panels():
        assert panel["datasource"]["uid"] in uids, f"{name}: {panel['title']}"
        assert panel["targets"], f"{name}: {panel['title']} has no query"
        for target in panel["targets"]:
            assert target["datasource"]["uid"] in uids
            assert target["expr"].strip()


def test_dashboards_cover_what_sres_need() -> None:
    used = set().union(*dashboard_metrics().values())
    for needed in (
        "residuals_meter_events_total",  # throughput by kind
        "residuals_consumer_lag_records",  # lag
        "residuals_meter_dead_letters_total",  # dead letters by reason
        "residuals_pipeline_latency_seconds_bucket",  # publish -> rated/ledger/alert
        "residuals_royalties_accrued_total",  # by currency, top avatars
        "residuals_alerts_raised_total",  # violations by kind and severity
        "up",
        "grpc_server_handled_total",  # service health
    ):
        assert needed in used, needed


def test_every_panel_and_rule_names_a_metric() -> None:
    for where, names in referenced_metrics().items():
        assert names, f"{where} selects no metric"


def test_rules_are_complete_and_each_has_a_promtool_test() -> None:
    tested = (PROMETHEUS / "rules_test.yml").read_text()
    for rule in rules():
        assert rule["labels"]["severity"] in {"page", "ticket", "info"}, rule["alert"]
        assert rule["annotations"]["summary"], rule["alert"]
        assert f"alertname: {rule['alert']}" in tested, f"{rule['alert']} has no promtool test"


def test_prometheus_scrapes_every_runnable_service() -> None:
    missing = runnable_services() - scrape_jobs()
    assert not missing, f"prometheus.yml does not scrape {sorted(missing)}"
