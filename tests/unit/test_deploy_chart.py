"""The Helm chart lints, renders valid Kubernetes objects, and deploy/k8s is its rendering.

helm is built once per machine from the Go module proxy and cached
(residuals.deploy.chart.ensure_helm); these tests fail, never skip, without it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from residuals.deploy import chart, consistency, services

ROOT = Path(__file__).parents[2]
CI_VALUES = ROOT / chart.CHART_DIR / "ci" / "full-values.yaml"


@pytest.fixture(scope="module")
def helm() -> Iterator[Path]:
    yield chart.ensure_helm()


def render(helm: Path, values: tuple[Path, ...] = (), **sets: str) -> list[dict[str, Any]]:
    return list(
        chart.documents(chart.helm_template(ROOT, values=values, set_values=sets, helm=helm))
    )


def workloads(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """{service: its Deployment or StatefulSet}."""
    return {
        d["metadata"]["labels"]["app.kubernetes.io/component"]: d
        for d in docs
        if d["kind"] in consistency.WORKLOAD_KINDS
    }


def pod_env(workload: dict[str, Any]) -> dict[str, dict[str, Any]]:
    (container,) = workload["spec"]["template"]["spec"]["containers"]
    return {e["name"]: e for e in container.get("env", [])}


def test_deploy_k8s_is_the_chart_rendered_with_default_values(helm: Path) -> None:
    wanted = chart.render_k8s(ROOT, helm=helm)
    drift = chart.compare_dir(ROOT / chart.K8S_DIR, wanted, chart.HAND_WRITTEN)
    assert drift.clean, f"deploy/k8s is stale ({drift.describe()}): run `residuals deploy generate`"


def test_the_chart_lints_strictly(helm: Path) -> None:
    chart.helm_lint(ROOT, helm=helm)
    chart.helm_lint(ROOT, values=[CI_VALUES], helm=helm)


@pytest.mark.parametrize("version", chart.KUBERNETES_VERSIONS)
def test_rendered_objects_are_valid_kubernetes(helm: Path, version: str, tmp_path: Path) -> None:
    import yaml

    path = tmp_path / "full.yaml"
    path.write_text(yaml.safe_dump_all(render(helm, (CI_VALUES,))))
    chart.kubernetes_validate([path], version)
    chart.kubernetes_validate(sorted((ROOT / chart.K8S_DIR).glob("*.yaml")), version)


def test_validation_rejects_a_broken_object(helm: Path, tmp_path: Path) -> None:
    import yaml

    docs = render(helm)
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    deployment["spec"]["template"]["spec"]["containers"][0]["startupProbe"]["grpc"]["port"] = "x"
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump(deployment))
    with pytest.raises(chart.DeployError, match="kubernetes-validate"):
        chart.kubernetes_validate([path], chart.KUBERNETES_VERSIONS[-1])


def test_every_optional_feature_renders_consistently(helm: Path) -> None:
    docs = render(helm, (CI_VALUES,))
    kinds = [d["kind"] for d in docs]
    assert "KafkaTopic" not in kinds  # topics.strimzi=false: the Job creates them
    (job,) = [d for d in docs if d["kind"] == "Job"]
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert container["command"] == ["residuals", "deploy", "init"]
    job_env = {e["name"]: e.get("value") for e in container["env"]}
    assert job_env["RESIDUALS_TOPIC_PREFIX"] == "staging."
    assert job_env["RESIDUALS_TOPIC_PARTITIONS"] == "24"
    assert container["image"].endswith("@sha256:" + "0" * 64)
    vendors = {
        d["metadata"]["name"]: d
        for d in docs
        if d["kind"] == "KafkaUser" and d["metadata"]["name"].startswith("vendor-")
    }
    assert set(vendors) == {"vendor-acme", "vendor-northwind"}
    assert vendors["vendor-acme"]["spec"]["quotas"] == {"producerByteRate": 10485760}
    assert "quotas" not in vendors["vendor-northwind"]["spec"]
    acme_topics = [
        a["resource"]["name"]
        for a in vendors["vendor-acme"]["spec"]["authorization"]["acls"]
        if a["resource"]["type"] == "topic"
    ]
    assert acme_topics == ["staging.residuals.usage.v1"]
    assert all(d["metadata"]["namespace"] == "kafka" for d in docs if d["kind"] == "KafkaUser")
    assert "ServiceMonitor" in kinds
    components = {d["metadata"]["labels"].get("app.kubernetes.io/component") for d in docs}
    assert "payouts" not in components  # services.payouts.enabled=false
    meter = workloads(docs)["meter"]
    env = pod_env(meter)
    assert env["KAFKA_SASL_PASSWORD"]["valueFrom"]["secretKeyRef"] == {
        "name": "residuals-meter",
        "key": "password",
    }
    # The Job creates the topics as the admin principal, and sets the roles' passwords.
    job_env = {e["name"]: e for e in container["env"]}
    assert job_env["KAFKA_SASL_USERNAME"]["value"] == "residuals-admin"
    assert job_env["KAFKA_SASL_PASSWORD"]["valueFrom"]["secretKeyRef"]["name"] == (
        "residuals-kafka-admin"
    )
    assert job_env["KAFKA_SSL_CA_LOCATION"]["value"] == "/etc/residuals/kafka-ca/ca.crt"
    # mTLS: the APIs require client certificates; alerts presents the release's own.
    maps = {d["metadata"]["name"]: d["data"] for d in docs if d["kind"] == "ConfigMap"}
    assert maps["residuals-ingest"]["GRPC_TLS_CLIENT_CA"] == "/etc/residuals/grpc-tls/ca.crt"
    assert maps["residuals-alerts"]["ALERTS_LICENSING_TLS_CERT"] == (
        "/etc/residuals/grpc-tls/tls.crt"
    )
    assert "GRPC_TLS_CLIENT_CA" not in maps["residuals-meter"]
    # The gateway presents the same client certificate to the APIs, and a disabled
    # service (payouts) is left unconfigured: its routes answer 503.
    gateway = maps["residuals-gateway"]
    assert gateway["GATEWAY_BACKEND_TLS_CERT"] == "/etc/residuals/grpc-tls/tls.crt"
    assert gateway["GATEWAY_BACKEND_TLS_KEY"] == "/etc/residuals/grpc-tls/tls.key"
    assert gateway["GATEWAY_PAYOUTS_ADDRESS"] == ""
    assert gateway["GATEWAY_INGEST_ADDRESS"] == "residuals-ingest:50051"
    assert "GRPC_TLS_CLIENT_CA" not in gateway and "GRPC_TLS_CERT" not in gateway
    (policy,) = [d for d in docs if d["kind"] == "NetworkPolicy"
                 and d["metadata"]["name"] == "residuals-gateway"]  # fmt: skip
    (http_rule,) = [r for r in policy["spec"]["ingress"] if r["ports"][0]["port"] == "http"]
    assert http_rule["from"] == [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ingress-nginx"}}}
    ]
    # alerts opted in to static membership: a StatefulSet of a gRPC API, its headless
    # Service (serving gRPC) as governing Service, each pod its own sink member id.
    alerts = workloads(docs)["alerts"]
    assert alerts["kind"] == "StatefulSet"
    assert pod_env(alerts)["SINK_GROUP_INSTANCE_ID"]["valueFrom"] == {
        "fieldRef": {"fieldPath": "metadata.name"}
    }
    (headless,) = [d for d in docs if d["metadata"]["name"] == alerts["spec"]["serviceName"]]
    assert headless["spec"]["clusterIP"] == "None"
    assert [p["name"] for p in headless["spec"]["ports"]] == ["grpc"]
    assert consistency.strimzi_problems(docs) == []
    assert consistency.security_problems(docs) == []
    assert consistency.workload_problems(docs) == []
    assert consistency.env_problems(docs) == ["payouts: the chart does not run it"]


def test_each_secure_default_has_a_working_opt_out(helm: Path) -> None:
    docs = render(
        helm,
        **{
            "kafka.sasl.enabled": "false",
            "grpcTls.enabled": "false",
            "postgres.roles.enabled": "false",
            "receiptKey.enabled": "false",
        },
    )
    maps = {d["metadata"]["name"]: d["data"] for d in docs if d["kind"] == "ConfigMap"}
    ingest = maps["residuals-ingest"]
    for var in ("KAFKA_SECURITY_PROTOCOL", "GRPC_TLS_CERT", "GRPC_HEALTH_PORT", "DATABASE_USER"):
        assert var not in ingest
    assert maps["residuals-alerts"]["ALERTS_LICENSING_TLS"] == "false"
    gateway = maps["residuals-gateway"]
    assert gateway["GATEWAY_BACKEND_TLS"] == "false"
    assert gateway["GATEWAY_BACKEND_TLS_CA"] == gateway["GATEWAY_BACKEND_TLS_CERT"] == ""
    gateway_pod = workloads(docs)["gateway"]["spec"]["template"]["spec"]
    assert [v["name"] for v in gateway_pod["volumes"]] == ["tmp"]
    deployment = next(d for d in docs if d["metadata"]["name"] == "residuals-ingest"
                      and d["kind"] == "Deployment")  # fmt: skip
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["readinessProbe"]["grpc"]["port"] == 50051
    assert [v["name"] for v in pod["volumes"]] == ["tmp"]
    assert {e["name"] for e in container["env"]} == {"DATABASE_URL"}
    assert "RESIDUALS_RECEIPT_KEY" not in pod_env(workloads(docs)["meter"])
    assert "RESIDUALS_RECEIPT_KEY" not in maps["residuals-meter"]
    service = next(d for d in docs if d["kind"] == "Service"
                   and d["metadata"]["name"] == "residuals-ingest")  # fmt: skip
    assert service["spec"]["ports"][0]["appProtocol"] == "kubernetes.io/h2c"
    # The check of `residuals deploy check` says what the opt-outs gave up.
    problems = consistency.security_problems(docs)
    assert "ingest: Kafka without SASL (None)" in problems
    assert "ingest: does not connect as residuals_ingest" in problems
    assert any(p.startswith("ingest: GRPC_TLS_CERT") for p in problems)
    assert "meter: RESIDUALS_RECEIPT_KEY does not come from a Secret" in problems


def test_the_stream_workers_fall_back_to_dynamic_membership(helm: Path) -> None:
    """staticMembership=false: Deployments (surge rollouts), no membership id at all, the
    HPA follows the kind, and no governing Service is left behind for the workers."""
    docs = render(helm, **{"defaults.staticMembership": "false"})
    kinds = {name: d["kind"] for name, d in workloads(docs).items()}
    assert kinds == dict.fromkeys(kinds, "Deployment") and set(kinds) == {
        s.name for s in services.SERVICES
    }
    for service in services.SERVICES:
        if service.member_id is not None:
            assert service.member_id not in pod_env(workloads(docs)[service.name])
    (hpa,) = [d for d in docs if d["kind"] == "HorizontalPodAutoscaler"]
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "residuals-meter",
    }
    names = {d["metadata"]["name"] for d in docs if d["kind"] == "Service"}
    assert "residuals-meter-headless" not in names and "residuals-ledger-headless" not in names
    assert workloads(docs)["ledger"]["spec"]["strategy"]["rollingUpdate"]["maxSurge"] == 1
    assert consistency.workload_problems(docs) == []
    assert consistency.env_problems(docs) == []
    # One service at a time: the meter alone back to a Deployment.
    docs = render(helm, **{"services.meter.staticMembership": "false"})
    assert {n: d["kind"] for n, d in workloads(docs).items() if n in {"meter", "ledger"}} == {
        "meter": "Deployment",
        "ledger": "StatefulSet",
    }


def test_the_chart_refuses_a_hand_set_membership_id_or_a_plain_receipt_key(helm: Path) -> None:
    """A value in env would be shared by every replica (each fences the others) and, on a
    Deployment, outlive the pod it was meant for; the key would sit in a ConfigMap."""
    for static in ("true", "false"):
        with pytest.raises(chart.DeployError, match="METER_INSTANCE_ID must be unique per"):
            render(
                helm,
                **{
                    "services.meter.env.METER_INSTANCE_ID": "meter-1",
                    "services.meter.staticMembership": static,
                },
            )
    with pytest.raises(chart.DeployError, match="SINK_GROUP_INSTANCE_ID must be unique per"):
        render(
            helm,
            **{
                "services.ledger.secretEnv.SINK_GROUP_INSTANCE_ID.secret": "x",
                "services.ledger.secretEnv.SINK_GROUP_INSTANCE_ID.key": "id",
            },
        )
    with pytest.raises(chart.DeployError, match="does not belong in a ConfigMap"):
        render(helm, **{"services.ingest.env.RESIDUALS_RECEIPT_KEY": "00" * 32})
    # The port is the chart's: container port, Service and probes follow it, not env.
    with pytest.raises(chart.DeployError, match=r"services\.gateway\.env\.GATEWAY_PORT.*httpPort"):
        render(helm, **{"services.gateway.env.GATEWAY_PORT": "9000"})
    with pytest.raises(chart.DeployError, match=r"services\.ingest\.env\.GRPC_PORT.*grpcPort"):
        render(helm, **{"services.ingest.env.GRPC_PORT": "9000"})


def test_the_gateway_follows_http_port_and_can_be_left_out(helm: Path) -> None:
    docs = render(helm, httpPort="9000")
    gateway = workloads(docs)["gateway"]
    (container,) = gateway["spec"]["template"]["spec"]["containers"]
    assert {p["name"]: p["containerPort"] for p in container["ports"]}["http"] == 9000
    (config,) = [d for d in docs if d["kind"] == "ConfigMap"
                 and d["metadata"]["name"] == "residuals-gateway"]  # fmt: skip
    assert config["data"]["GATEWAY_PORT"] == "9000"
    (service,) = [d for d in docs if d["kind"] == "Service"
                  and d["metadata"]["name"] == "residuals-gateway"]  # fmt: skip
    assert service["spec"]["ports"][0] == {
        "name": "http",
        "port": 9000,
        "targetPort": "http",
        "protocol": "TCP",
        "appProtocol": "http",
    }
    assert consistency.security_problems(docs) == []
    assert consistency.env_problems(docs) == []
    docs = render(helm, **{"services.gateway.enabled": "false"})
    assert not [d for d in docs if d["metadata"]["labels"].get("app.kubernetes.io/component")
                == "gateway"]  # fmt: skip
    assert consistency.env_problems(docs) == ["gateway: the chart does not run it"]


def test_topics_through_the_job_need_an_admin_principal_under_sasl(helm: Path) -> None:
    with pytest.raises(chart.DeployError, match=r"kafka\.sasl\.admin\.username"):
        render(helm, **{"kafka.strimzi.topics": "false"})
    docs = render(helm, **{"kafka.strimzi.topics": "false", "kafka.sasl.enabled": "false"})
    (job,) = [d for d in docs if d["kind"] == "Job"]
    env = {e["name"] for e in job["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert "KAFKA_SASL_USERNAME" not in env and "KAFKA_BOOTSTRAP_SERVERS" in env


def test_the_chart_refuses_more_processor_replicas_than_partitions(helm: Path) -> None:
    with pytest.raises(chart.DeployError, match=r"exceeds kafka\.partitions"):
        render(helm, **{"services.meter.autoscaling.maxReplicas": "13"})
    with pytest.raises(chart.DeployError, match=r"exceeds kafka\.partitions"):
        render(helm, **{"services.ledger.replicas": "13", "kafka.partitions": "12"})
    docs = render(helm, **{"kafka.partitions": "3", "services.meter.autoscaling.maxReplicas": "3"})
    (hpa,) = [d for d in docs if d["kind"] == "HorizontalPodAutoscaler"]
    assert hpa["spec"]["maxReplicas"] == 3


def test_the_values_schema_rejects_unknown_services_and_bad_vendor_ids(helm: Path) -> None:
    with pytest.raises(chart.DeployError, match="additional properties 'metre'"):
        render(helm, **{"services.metre.replicas": "1"})
    with pytest.raises(chart.DeployError, match="does not match pattern"):
        render(helm, **{"kafka.vendors[0].id": "Acme_Co"})


def test_the_values_schema_names_exactly_the_catalogue_services() -> None:
    import json

    schema = json.loads((ROOT / chart.CHART_DIR / "values.schema.json").read_text())
    assert set(schema["properties"]["services"]["properties"]) == {
        s.name for s in services.SERVICES
    }


def test_split_by_template_groups_documents_per_source() -> None:
    rendered = (
        "---\n# Source: residuals/templates/a.yaml\nkind: A\nmetadata: {name: one}\n"
        "---\n# Source: residuals/templates/a.yaml\nkind: A\nmetadata: {name: two}\n"
        "---\n# Source: residuals/templates/b.yaml\n\n"
        "---\n# Source: residuals/templates/c.yaml\nkind: C\n"
    )
    files = chart.split_by_template(rendered)
    assert list(files) == ["a.yaml", "c.yaml"]
    assert files["a.yaml"].count("\n---\n") == 2
    assert "name: one" in files["a.yaml"] and "name: two" in files["a.yaml"]


def test_the_chart_ships_the_repositorys_dashboards_and_rules(helm: Path) -> None:
    import json

    import yaml

    docs = render(helm, (CI_VALUES,))
    (rule,) = [d for d in docs if d["kind"] == "PrometheusRule"]
    rules = yaml.safe_load((ROOT / "deploy" / "prometheus" / "rules.yml").read_text())
    assert rule["spec"] == rules
    dashboards = {
        key: json.loads(value)
        for d in docs
        if d["kind"] == "ConfigMap" and d["metadata"]["labels"].get("grafana_dashboard") == "1"
        for key, value in d["data"].items()
    }
    on_disk = {
        p.name: json.loads(p.read_text())
        for p in (ROOT / "deploy" / "grafana" / "dashboards").glob("*.json")
    }
    assert dashboards == on_disk and dashboards
    (datasource,) = [d for d in docs if d["metadata"]["labels"].get("grafana_datasource") == "1"]
    assert "uid: residuals-prometheus" in next(iter(datasource["data"].values()))
    defaults = render(helm)
    assert not [d for d in defaults if d["kind"] == "PrometheusRule"]
