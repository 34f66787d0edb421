"""Topics, ACLs and settings in the deployment come from the code, and cannot drift from it.

These tests read the committed artefacts (helm/residuals/files/catalogue.json,
deploy/k8s/*.yaml, docker-compose.yml, Dockerfile) without helm; tests/unit/
test_deploy_chart.py renders the chart itself.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import types
from pathlib import Path
from typing import Any

import pytest
import yaml

from residuals.deploy import catalogue, chart, consistency, kafka_admin, lock, services
from residuals.deploy.catalogue import AclRule, service_acls, strimzi_topic, vendor_acls
from residuals.deploy.kafka_admin import TopicState, acl_script, plan_topics
from residuals.platform import roles, topics

ROOT = Path(__file__).parents[2]
K8S = ROOT / chart.K8S_DIR
VALUES = yaml.safe_load((ROOT / chart.CHART_DIR / "values.yaml").read_text())


def k8s_docs() -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for path in sorted(K8S.glob("*.yaml")):
        docs += chart.documents(path.read_text())
    return docs


def of_kind(kind: str) -> list[dict[str, Any]]:
    return [d for d in k8s_docs() if d["kind"] == kind]


def workloads() -> dict[str, dict[str, Any]]:
    """{service: its Deployment or StatefulSet} in deploy/k8s."""
    return {
        d["metadata"]["labels"]["app.kubernetes.io/component"]: d
        for d in k8s_docs()
        if d["kind"] in consistency.WORKLOAD_KINDS
    }


def pod_env(workload: dict[str, Any]) -> dict[str, dict[str, Any]]:
    (container,) = workload["spec"]["template"]["spec"]["containers"]
    return {e["name"]: e for e in container.get("env", [])}


# --- catalogue.json and topics -----------------------------------------------------------


def test_committed_catalogue_is_what_the_code_generates() -> None:
    committed = (ROOT / catalogue.CATALOGUE_PATH).read_text()
    assert committed == catalogue.catalogue_json(), (
        "helm/residuals/files/catalogue.json is stale: run `residuals deploy generate`"
    )


def test_every_catalogue_topic_is_a_kafkatopic_with_the_catalogues_settings() -> None:
    kafka = VALUES["kafka"]
    rendered = {d["spec"]["topicName"]: d for d in of_kind("KafkaTopic")}
    assert set(rendered) == {t.name for t in topics.ALL}
    for topic in topics.ALL:
        expected = strimzi_topic(
            topic,
            partitions=kafka["partitions"],
            replicas=kafka["replicas"],
            cluster=kafka["strimzi"]["cluster"],
            min_insync_replicas=kafka["minInsyncReplicas"],
        )
        doc = rendered[topic.name]
        assert doc["metadata"]["name"] == expected["metadata"]["name"]
        assert doc["spec"] == expected["spec"], topic.name
        assert doc["metadata"]["labels"]["strimzi.io/cluster"] == "residuals"


def test_compacted_topics_are_compacted_and_logs_are_retained() -> None:
    specs = {d["spec"]["topicName"]: d["spec"]["config"] for d in of_kind("KafkaTopic")}
    assert specs[topics.LICENCES.name]["cleanup.policy"] == "compact"
    assert "retention.ms" not in specs[topics.LICENCES.name]
    assert specs[topics.USAGE.name] == {
        "cleanup.policy": "delete",
        "retention.ms": str(topics.USAGE.retention_ms),
        "min.insync.replicas": "2",
        # Vendors produce here: the broker, not the producer, stamps each record's time.
        "message.timestamp.type": "LogAppendTime",
    }


def test_kubernetes_names_of_topics() -> None:
    assert (
        catalogue.kubernetes_name("staging_x.residuals.usage.v1") == "staging-x.residuals.usage.v1"
    )
    with pytest.raises(ValueError):
        catalogue.kubernetes_name("__")


# --- ACLs --------------------------------------------------------------------------------


def _topic_ops(rules: list[AclRule]) -> dict[str, set[str]]:
    return {
        r.name: set(r.operations) for r in rules if r.resource == "topic" and r.pattern == "literal"
    }


def test_each_topic_is_written_only_by_its_producers() -> None:
    writers: dict[str, set[str]] = {}
    for service in services.SERVICES:
        for name, ops in _topic_ops(service_acls(service)).items():
            if "Write" in ops:
                writers.setdefault(name, set()).add(service.name)
    assert writers == {
        topics.USAGE.name: {"ingest"},
        topics.USAGE_DLQ.name: {"ingest", "meter"},
        topics.USAGE_RATED.name: {"meter"},
        topics.ALERTS.name: {"meter"},
        topics.LICENCES.name: {"licensing"},
        topics.APPROVALS.name: {"licensing"},
        topics.SIGNING_KEYS.name: {"licensing"},
        topics.PAYOUTS.name: {"payouts"},
        topics.QUARANTINE.name: {"meter"},
    }


def test_a_vendor_may_only_publish_usage() -> None:
    rules = vendor_acls("acme")
    topic_rules = [r for r in rules if r.resource == "topic"]
    # Literal, never a prefix: "residuals.usage." would also match the rated topic and DLQ.
    assert topic_rules == [
        AclRule("topic", topics.USAGE.name, "literal", ("Write", "Describe"), prefixed=True)
    ]
    assert {r.resource for r in rules} == {"topic", "transactionalId", "cluster"}
    (txn,) = [r for r in rules if r.resource == "transactionalId"]
    assert (txn.name, txn.pattern) == ("vendor-acme", "prefix")
    assert not any("Read" in r.operations for r in rules)


@pytest.mark.parametrize("bad", ["", "Acme", "acme_co", "-acme", "a" * 43, "acme-"])
def test_vendor_ids_must_make_valid_principal_names(bad: str) -> None:
    with pytest.raises(ValueError, match="vendor id"):
        vendor_acls(bad)


def test_every_topic_a_service_names_in_code_is_granted() -> None:
    assert consistency.acl_problems(ROOT / "services" / "residuals") == []


def test_the_code_to_acl_check_catches_an_ungranted_topic(tmp_path: Path) -> None:
    package = tmp_path / "alerts"
    package.mkdir()
    (package / "x.py").write_text(
        "from residuals.platform import topics\n"
        "from residuals.platform.topics import PAYOUTS\n"
        "NAME = topics.USAGE_RATED\n"
    )
    problems = consistency.acl_problems(tmp_path)
    assert len(problems) == 2
    assert "topics.PAYOUTS" in problems[0] and "topics.USAGE_RATED" in problems[1]


def with_kafka() -> list[services.Service]:
    return [s for s in services.SERVICES if s.kafka is not None]


def test_a_service_without_kafka_access_has_no_principal_and_no_acls() -> None:
    """The HTTP gateway only calls the gRPC services: no KafkaUser, no ACL, no script line."""
    assert [s.name for s in services.SERVICES if s.kafka is None] == ["gateway"]
    gateway = services.by_name("gateway")
    assert gateway.principal is None and service_acls(gateway) == []
    entry = catalogue.catalogue()["services"]["gateway"]
    assert (entry["kafka"], entry["principal"], entry["acls"]) == (False, None, [])
    assert all(catalogue.catalogue()["services"][s.name]["kafka"] for s in with_kafka())
    assert "residuals-gateway" not in acl_script([])
    assert not [d for d in of_kind("KafkaUser") if "gateway" in d["metadata"]["name"]]


def test_an_http_service_names_its_own_port_variable() -> None:
    with pytest.raises(ValueError, match="port_env"):
        services.Service("x", services.Kind.HTTP, "x", kafka=None, database=False)
    with pytest.raises(ValueError, match="port_env"):
        services.Service("x", services.Kind.GRPC, "x", kafka=None, port_env="X_PORT")
    assert {s.name: s.port_env for s in services.SERVICES if s.kind is services.Kind.HTTP} == {
        "gateway": "GATEWAY_PORT"
    }


def test_kafkausers_carry_the_generated_acls() -> None:
    users = {d["metadata"]["name"]: d for d in of_kind("KafkaUser")}
    assert set(users) == {s.principal for s in with_kafka()}
    for service in with_kafka():
        assert service.principal is not None
        acls = users[service.principal]["spec"]["authorization"]["acls"]
        expected = service_acls(service)
        assert len(acls) == len(expected)
        for acl, rule in zip(acls, expected, strict=True):
            assert acl["resource"]["type"] == rule.resource
            assert acl["operations"] == list(rule.operations)
            if rule.resource != "cluster":
                assert acl["resource"]["name"] == rule.full_name(VALUES["kafka"]["topicPrefix"])
                assert acl["resource"]["patternType"] == rule.pattern


def test_acl_script_grants_the_same_rules(tmp_path: Path) -> None:
    script = acl_script(["acme"], topic_prefix="staging.", vendor_producer_byte_rate=1024)
    assert script.startswith("#!/usr/bin/env bash")
    assert "user vendor-acme\nquota vendor-acme producer_byte_rate=1024\n" in script
    assert (
        "acl --allow-principal User:vendor-acme --operation Write --operation Describe "
        "--topic staging.residuals.usage.v1 --resource-pattern-type literal"
    ) in script
    assert (
        "acl --allow-principal User:residuals-meter --operation Create --operation Read "
        "--operation Write --operation Describe --operation DescribeConfigs "
        "--operation AlterConfigs --topic staging.meter --resource-pattern-type prefixed"
    ) in script
    # The alerts group is not prefixed by the service, so it is not prefixed here either.
    assert "--group residuals-alerts --resource-pattern-type prefixed" in script
    assert "residuals-gateway" not in script  # no Kafka access, no principal
    path = tmp_path / "acls.sh"
    path.write_text(script)
    assert subprocess.run(["bash", "-n", str(path)], check=False).returncode == 0
    lines = [line for line in script.splitlines() if line.startswith("acl ")]
    assert len(lines) == sum(len(service_acls(s)) for s in services.SERVICES) + len(
        vendor_acls("acme")
    )


# --- topic set-up without an operator ----------------------------------------------------


def test_topic_plan_creates_missing_and_aligns_configs_but_never_grows() -> None:
    existing = {
        "p.residuals.usage.v1": TopicState(
            12, {"cleanup.policy": "delete", "retention.ms": "1000"}
        ),
        "p.residuals.licences.v1": TopicState(3, {"cleanup.policy": "compact"}),
    }
    plan = plan_topics(
        [topics.USAGE, topics.LICENCES, topics.ALERTS],
        existing,
        prefix="p.",
        partitions=6,
        min_insync_replicas=None,
    )
    assert plan.create == ["p.residuals.alerts.v1"]
    assert plan.alter == {
        "p.residuals.usage.v1": {
            "retention.ms": str(topics.USAGE.retention_ms),
            "message.timestamp.type": "LogAppendTime",
        }
    }
    (warning,) = plan.warnings
    assert "p.residuals.licences.v1 has 3 partitions" in warning


def test_topic_plan_sets_min_insync_replicas() -> None:
    existing = {"residuals.alerts.v1": TopicState(6, dict(topics.ALERTS.config()))}
    plan = plan_topics([topics.ALERTS], existing, prefix="", partitions=6, min_insync_replicas=2)
    assert plan.alter == {"residuals.alerts.v1": {"min.insync.replicas": "2"}}
    assert kafka_admin.desired_config(topics.LICENCES, None) == {"cleanup.policy": "compact"}


# --- settings and environment ------------------------------------------------------------


def test_settings_classes_are_found_for_the_services_in_the_tree() -> None:
    for service in services.SERVICES:
        present = (ROOT / "services" / "residuals" / service.name / "__main__.py").is_file()
        cls = services.settings_class(service.name)
        assert (cls is not None) == present, service.name
    assert services.settings_class("no_such_service") is None


def test_settings_discovery_refuses_an_ambiguous_module(monkeypatch: pytest.MonkeyPatch) -> None:
    module = types.ModuleType("residuals_fake_config")
    monkeypatch.setitem(sys.modules, module.__name__, module)
    exec(
        textwrap.dedent(
            """
            from dataclasses import dataclass
            from residuals.platform.config import TelemetrySettings, group, env

            @dataclass(frozen=True)
            class A:
                telemetry: TelemetrySettings = group(TelemetrySettings)

            @dataclass(frozen=True)
            class B:
                telemetry: TelemetrySettings = group(TelemetrySettings)

            @dataclass(frozen=True)
            class NotSettings:
                x: int = env("X", 1, help="no telemetry group")
            """
        ),
        module.__dict__,
    )
    with pytest.raises(services.SettingsDiscoveryError, match="found A, B"):
        services.find_settings(module)
    del module.B
    assert services.find_settings(module) is module.A


def test_the_manifests_give_each_service_exactly_what_its_settings_read() -> None:
    assert consistency.env_problems(k8s_docs()) == []


def test_the_environment_check_catches_unknown_and_missing_variables() -> None:
    docs = k8s_docs()
    for doc in docs:
        if doc["kind"] == "ConfigMap" and doc["metadata"]["name"] == "residuals-ledger":
            doc["data"]["LEDGER_BATCHSIZE"] = "10"
            del doc["data"]["KAFKA_BOOTSTRAP_SERVERS"]
    problems = consistency.env_problems(docs)
    assert any("LEDGER_BATCHSIZE" in p and "does not read" in p for p in problems)
    assert any("needs KAFKA_BOOTSTRAP_SERVERS" in p for p in problems)


def test_strimzi_resources_use_only_crd_fields() -> None:
    assert consistency.strimzi_problems(k8s_docs()) == []
    bad = {
        "apiVersion": "kafka.strimzi.io/v1beta2",
        "kind": "KafkaUser",
        "metadata": {"name": "x", "labels": {}},
        "spec": {
            "authentication": {"type": "scram-sha-256"},
            "authorization": {
                "type": "simple",
                "acls": [
                    {
                        "resource": {"type": "topic", "patternType": "prefixed"},
                        "operations": ["Read"],
                    }
                ],
            },
            "quotas": {"producerByteRate": 1.5e7},
        },
    }
    problems = consistency.strimzi_problems([bad])
    assert len(problems) == 5, problems


# --- workloads ---------------------------------------------------------------------------


def test_every_service_is_deployed_hardened_with_probes_of_its_kind() -> None:
    deployments = workloads()
    assert set(deployments) == {s.name for s in services.SERVICES}
    assert len(of_kind("Deployment")) + len(of_kind("StatefulSet")) == len(deployments)
    for name, doc in deployments.items():
        pod = doc["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        assert container["command"] == ["python", "-m", f"residuals.{name}"]
        kind = services.by_name(name).kind
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        if kind is services.Kind.HTTP:
            # An HTTP API: HTTP probes on its own port, alive on /healthz, ready on /readyz.
            assert ports == {"http": 8080, "metrics": 9464}, name
            for probe, path in consistency.HTTP_PROBES.items():
                assert "grpc" not in container[probe], (name, probe)
                assert container[probe]["httpGet"] == {"path": path, "port": "http"}
        else:
            # The APIs serve TLS, which the kubelet's gRPC probe cannot speak: it asks their
            # plaintext health-only port; the workers serve health on their gRPC port.
            probed = 50052 if kind is services.Kind.GRPC else 50051
            assert ports["grpc"] == 50051 and "http" not in ports, name
            for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                assert "httpGet" not in container[probe], (name, probe)
                assert container[probe]["grpc"]["port"] == probed, (name, probe)
        security = container["securityContext"]
        assert security["runAsNonRoot"] and security["readOnlyRootFilesystem"]
        assert security["capabilities"]["drop"] == ["ALL"]
        assert pod["automountServiceAccountToken"] is False
        assert container["resources"]["requests"] and container["resources"]["limits"]
        env = {e["name"]: e for e in container.get("env", [])}
        assert ("DATABASE_URL" in env) == services.by_name(name).database
        if "DATABASE_URL" in env:
            assert env["DATABASE_URL"]["valueFrom"]["secretKeyRef"]["name"] == "residuals-postgres"


def test_the_default_manifests_are_secure() -> None:
    """Kafka SASL per service, a PostgreSQL role per service, gRPC TLS from a Secret."""
    docs = [d for path in sorted(K8S.glob("*.yaml")) for d in chart.documents(path.read_text())]
    assert consistency.security_problems(docs) == []
    maps = {d["metadata"]["labels"]["app.kubernetes.io/component"]: d for d in of_kind("ConfigMap")}
    for service in services.SERVICES:
        data = maps[service.name]["data"]
        if service.kafka is None:
            assert not [var for var in data if var.startswith("KAFKA_")], service.name
            assert not [v for v in pod_env(workloads()[service.name]) if v.startswith("KAFKA_")]
        else:
            assert data["KAFKA_SECURITY_PROTOCOL"] == "SASL_SSL"
        assert data.get("DATABASE_USER") == (
            roles.database_role(service.name) if service.database else None
        )
        assert ("GRPC_TLS_CERT" in data) == (service.kind is services.Kind.GRPC)
    alerts = maps["alerts"]["data"]
    assert alerts["ALERTS_LICENSING_TLS"] == "true"
    assert alerts["ALERTS_LICENSING_TLS_CA"] == "/etc/residuals/grpc-tls/ca.crt"
    # The gateway reaches every gRPC API of the release over TLS, trusting the same CA,
    # from the Secret mounted read-only (no client certificate without clientAuth).
    gateway = maps["gateway"]["data"]
    assert {k: v for k, v in gateway.items() if k.endswith("_ADDRESS")} == {
        f"GATEWAY_{name.upper()}_ADDRESS": f"residuals-{name}:50051"
        for name in ("ingest", "licensing", "alerts", "payouts", "notify")
    }
    assert gateway["GATEWAY_BACKEND_TLS"] == "true"
    assert gateway["GATEWAY_BACKEND_TLS_CA"] == "/etc/residuals/grpc-tls/ca.crt"
    assert gateway["GATEWAY_BACKEND_TLS_CERT"] == gateway["GATEWAY_BACKEND_TLS_KEY"] == ""
    assert gateway["GATEWAY_PORT"] == "8080" and "GRPC_PORT" not in gateway
    pod = workloads()["gateway"]["spec"]["template"]["spec"]
    (mount,) = [m for m in pod["containers"][0]["volumeMounts"] if m["name"] == "grpc-tls"]
    assert mount == {"name": "grpc-tls", "mountPath": "/etc/residuals/grpc-tls", "readOnly": True}
    assert pod_env(workloads()["gateway"]) == {}  # no Secret reference: no credential at all
    (job,) = of_kind("Job")
    env = {
        e["name"]: e.get("value") for e in job["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    assert env["DATABASE_ROLE_PASSWORDS_DIR"] == "/etc/residuals/postgres-roles"


def test_ingest_and_the_meter_share_the_receipt_key_from_a_secret() -> None:
    """Trusted receipt time: the gateway stamps with the key the meter verifies with; it is
    never in a ConfigMap, and no other service gets it."""
    for name, workload in workloads().items():
        env = pod_env(workload)
        if services.by_name(name).receipt_key:
            assert env[consistency.RECEIPT_KEY]["valueFrom"] == {
                "secretKeyRef": {"name": "residuals-receipt-key", "key": "key"}
            }, name
        else:
            assert consistency.RECEIPT_KEY not in env, name
    assert {s.name for s in services.SERVICES if s.receipt_key} == {"ingest", "meter"}
    assert not [d for d in of_kind("ConfigMap") if consistency.RECEIPT_KEY in d.get("data", {})]
    assert VALUES["receiptKey"] == {
        "enabled": True,
        "secretName": "residuals-receipt-key",
        "secretKey": "key",
    }


def test_the_stream_workers_are_static_members_named_after_their_pods() -> None:
    """meter and ledger: StatefulSets (stable pod names across restarts and rollouts) whose
    pods take their group.instance.id from metadata.name; alerts and notify stay Deployments."""
    found = workloads()
    assert {n: d["kind"] for n, d in found.items()} == {
        "licensing": "Deployment",
        "ingest": "Deployment",
        "meter": "StatefulSet",
        "ledger": "StatefulSet",
        "payouts": "Deployment",
        "alerts": "Deployment",
        "notify": "Deployment",
        "gateway": "Deployment",
    }
    headless = {d["metadata"]["name"]: d for d in of_kind("Service")
                if d["spec"].get("clusterIP") == "None"}  # fmt: skip
    for name, variable in (("meter", "METER_INSTANCE_ID"), ("ledger", "SINK_GROUP_INSTANCE_ID")):
        assert services.by_name(name).member_id == variable
        spec = found[name]["spec"]
        assert pod_env(found[name])[variable]["valueFrom"] == {
            "fieldRef": {"fieldPath": "metadata.name"}
        }
        assert spec["podManagementPolicy"] == "Parallel"
        assert spec["updateStrategy"] == {"type": "RollingUpdate"}
        assert spec["serviceName"] == f"residuals-{name}-headless"
        governing = headless[spec["serviceName"]]["spec"]["selector"]
        assert governing == spec["selector"]["matchLabels"]
        assert "volumeClaimTemplates" not in spec  # state lives in Kafka and PostgreSQL
    assert "SINK_GROUP_INSTANCE_ID" not in pod_env(found["alerts"])
    # PDB, NetworkPolicy and Service still select the StatefulSets' pods.
    for kind in ("PodDisruptionBudget", "NetworkPolicy", "Service"):
        for doc in of_kind(kind):
            name = doc["metadata"]["labels"]["app.kubernetes.io/component"]
            selector = (
                doc["spec"]["selector"]
                if kind == "Service"
                else doc["spec"].get("selector", doc["spec"].get("podSelector"))["matchLabels"]
            )
            labels = found[name]["spec"]["template"]["metadata"]["labels"]
            assert selector.items() <= labels.items(), (kind, name)
    assert consistency.workload_problems(k8s_docs()) == []


def test_the_workload_check_names_what_is_wrong() -> None:
    docs = k8s_docs()
    by_name = {(d["kind"], d["metadata"]["name"]): d for d in docs}
    meter = by_name[("StatefulSet", "residuals-meter")]
    for item in meter["spec"]["template"]["spec"]["containers"][0]["env"]:
        if item["name"] == "METER_INSTANCE_ID":
            item.pop("valueFrom")
            item["value"] = "meter"  # one id for every replica
    meter["spec"]["podManagementPolicy"] = "OrderedReady"
    ledger = by_name[("StatefulSet", "residuals-ledger")]
    ledger["spec"]["serviceName"] = "residuals-ledger"  # not headless
    alerts = by_name[("Deployment", "residuals-alerts")]
    alerts["spec"]["template"]["spec"]["containers"][0]["env"].append(
        {"name": "SINK_GROUP_INSTANCE_ID", "value": "alerts"}
    )
    (hpa,) = [d for d in docs if d["kind"] == "HorizontalPodAutoscaler"]
    hpa["spec"]["scaleTargetRef"]["kind"] = "Deployment"
    assert consistency.workload_problems(docs) == [
        "alerts: SINK_GROUP_INSTANCE_ID is set on a Deployment, whose pod names change with "
        "every rollout (a static id must be one replica's, stable): use a StatefulSet",
        "ledger: serviceName 'residuals-ledger' is not a headless Service",
        "meter: METER_INSTANCE_ID does not come from the pod name (metadata.name)",
        "meter: podManagementPolicy is not Parallel",
        "HorizontalPodAutoscaler/residuals-meter: targets Deployment/residuals-meter, which is "
        "not rendered",
    ]


def test_the_catalogue_flags_agree_with_the_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """member_id and receipt_key are checked against what each settings dataclass reads."""
    import dataclasses

    changed = tuple(
        dataclasses.replace(s, receipt_key=False)
        if s.name == "ingest"
        else dataclasses.replace(s, member_id="METER_ID")
        if s.name == "meter"
        else s
        for s in services.SERVICES
    )
    monkeypatch.setattr(consistency, "SERVICES", changed)
    problems = consistency.env_problems(k8s_docs())
    assert problems == [
        "ingest: receipt_key=False in residuals.deploy.services but IngestSettings reads "
        "RESIDUALS_RECEIPT_KEY",
        "meter: member_id=METER_ID in residuals.deploy.services but MeterSettings does not read it",
    ]
    gateway = dataclasses.replace(services.by_name("gateway"), port_env="GATEWAY_HTTP_PORT")
    monkeypatch.setattr(consistency, "SERVICES", (gateway,))
    assert consistency.env_problems(k8s_docs()) == [
        "gateway: port_env=GATEWAY_HTTP_PORT in residuals.deploy.services but GatewaySettings "
        "does not read it"
    ]


def test_the_security_check_names_what_is_missing() -> None:
    docs = [d for path in sorted(K8S.glob("*.yaml")) for d in chart.documents(path.read_text())]
    for doc in docs:
        if doc["kind"] == "ConfigMap" and doc["metadata"]["name"] == "residuals-ingest":
            doc["data"]["KAFKA_SECURITY_PROTOCOL"] = "PLAINTEXT"
            del doc["data"]["DATABASE_USER"]
            doc["data"]["GRPC_TLS_CERT"] = "/tmp/tls.crt"
    assert consistency.security_problems(docs) == [
        "ingest: Kafka without SASL (PLAINTEXT)",
        "ingest: does not connect as residuals_ingest",
        "ingest: GRPC_TLS_CERT='/tmp/tls.crt' is not in a mounted Secret",
    ]


def test_the_security_check_holds_the_gateway_to_http_probes_and_no_kafka() -> None:
    docs = [d for path in sorted(K8S.glob("*.yaml")) for d in chart.documents(path.read_text())]
    for doc in docs:
        if doc["metadata"]["name"] != "residuals-gateway":
            continue
        if doc["kind"] == "ConfigMap":
            doc["data"]["KAFKA_BOOTSTRAP_SERVERS"] = "kafka:9092"
        elif doc["kind"] == "Deployment":
            (container,) = doc["spec"]["template"]["spec"]["containers"]
            container["readinessProbe"] = {"grpc": {"port": 50051}}
            container["ports"][0]["containerPort"] = 8081
    assert consistency.security_problems(docs) == [
        "gateway: has no Kafka access but gets KAFKA_BOOTSTRAP_SERVERS",
        "gateway: container port http (8081) is not GATEWAY_PORT (8080)",
        "gateway: readinessProbe is not an HTTP GET of /readyz on port http",
    ]


def test_every_database_service_has_a_role_in_the_catalogue() -> None:
    assert set(roles.DATABASE_SERVICES) == {s.name for s in services.SERVICES if s.database}
    generated = catalogue.catalogue()["services"]
    for service in services.SERVICES:
        role = generated[service.name]["databaseRole"]
        assert role == (roles.database_role(service.name) if service.database else None)


def test_pdbs_networkpolicies_and_the_meter_hpa() -> None:
    names = {s.name for s in services.SERVICES}
    for kind in ("PodDisruptionBudget", "NetworkPolicy", "Service", "ConfigMap", "ServiceAccount"):
        found = {d["metadata"]["labels"]["app.kubernetes.io/component"] for d in of_kind(kind)}
        assert found == names, kind
    (hpa,) = of_kind("HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "name": "residuals-meter",
    }
    assert hpa["spec"]["maxReplicas"] <= VALUES["kafka"]["partitions"]
    ledger = workloads()["ledger"]
    assert ledger["spec"]["replicas"] <= VALUES["kafka"]["partitions"]
    (job,) = of_kind("Job")
    assert job["spec"]["template"]["spec"]["containers"][0]["command"] == ["residuals", "migrate"]


def _egress_ports(policy: dict[str, Any]) -> set[int]:
    return {p["port"] for rule in policy["spec"]["egress"] for p in rule.get("ports", [])}


def test_egress_to_kafka_and_postgresql_only_for_the_services_that_use_them() -> None:
    kafka_ports = set(VALUES["kafka"]["ports"])
    postgres_port = VALUES["postgres"]["port"]
    for policy in of_kind("NetworkPolicy"):
        service = services.by_name(policy["metadata"]["labels"]["app.kubernetes.io/component"])
        ports = _egress_ports(policy)
        assert (kafka_ports <= ports) == (service.kafka is not None), service.name
        assert (postgres_port in ports) == service.database, service.name


def test_the_gateway_may_reach_only_dns_otlp_and_the_grpc_apis() -> None:
    """No Kafka, no PostgreSQL: the gateway's NetworkPolicy opens DNS, the OTLP endpoint and
    the release's pods on the gRPC port, and nothing else; callers reach it on http."""
    (policy,) = [
        p for p in of_kind("NetworkPolicy") if p["metadata"]["name"] == "residuals-gateway"
    ]
    egress = policy["spec"]["egress"]
    assert _egress_ports(policy) == {53, VALUES["telemetry"]["otlpPort"], VALUES["grpcPort"]}
    assert not set(VALUES["kafka"]["ports"]) & _egress_ports(policy)
    assert VALUES["postgres"]["port"] not in _egress_ports(policy)
    (to_apis,) = [rule for rule in egress if rule.get("to")]
    assert to_apis["to"] == [
        {
            "podSelector": {
                "matchLabels": {
                    "app.kubernetes.io/name": "residuals",
                    "app.kubernetes.io/instance": "residuals",
                }
            }
        }
    ]
    assert to_apis["ports"] == [{"port": VALUES["grpcPort"], "protocol": "TCP"}]
    ingress = {p["port"] for rule in policy["spec"]["ingress"] for p in rule["ports"]}
    assert ingress == {"http", "metrics"}
    (service,) = [s for s in of_kind("Service") if s["metadata"]["name"] == "residuals-gateway"]
    assert {p["name"]: p["port"] for p in service["spec"]["ports"]} == {
        "http": 8080,
        "metrics": 9464,
    }


def test_only_notify_reaches_beyond_the_cluster_and_never_private_addresses() -> None:
    """Webhooks go to the internet; the policy opens public addresses to notify alone and
    keeps the metadata service and private ranges closed, as the SSRF guard does."""
    blocks: dict[str, list[dict[str, Any]]] = {}
    for policy in of_kind("NetworkPolicy"):
        name = policy["metadata"]["labels"]["app.kubernetes.io/component"]
        blocks[name] = [
            peer["ipBlock"]
            for rule in policy["spec"]["egress"]
            for peer in rule.get("to", [])
            if "ipBlock" in peer
        ]
    assert {n for n, found in blocks.items() if found} == {"notify"}
    v4 = next(b for b in blocks["notify"] if b["cidr"] == "0.0.0.0/0")
    assert {"169.254.0.0/16", "10.0.0.0/8", "127.0.0.0/8", "100.64.0.0/10"} <= set(v4["except"])
    v6 = next(b for b in blocks["notify"] if b["cidr"] == "::/0")
    assert {"fe80::/10", "fc00::/7", "::1/128"} <= set(v6["except"])


# --- image and compose -------------------------------------------------------------------


def test_dockerfile_is_pinned_non_root_and_hadolint_clean() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert "ARG PYTHON_IMAGE=python:3.11." in text and "-slim" in text
    assert "USER 10001:10001" in text
    assert text.count("FROM ") == 2  # build stage + runtime stage
    chart.hadolint(ROOT)


def test_the_build_context_builds_the_package_with_its_data(tmp_path: Path) -> None:
    """Copy what .dockerignore lets through and build the wheel the image installs."""
    ignore = (ROOT / ".dockerignore").read_text().splitlines()
    allowed = {"!pyproject.toml", "!README.md", "!services/", "!deploy/requirements.lock"}
    assert "*" in ignore and allowed <= set(ignore)
    context = tmp_path / "context"
    context.mkdir()
    tracked = subprocess.run(
        ["git", "ls-files", "pyproject.toml", "README.md", "services", lock.LOCK_PATH],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    for rel in tracked:
        target = context / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes((ROOT / rel).read_bytes())
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "--wheel-dir",
            str(tmp_path / "wheels"),
            str(context),
        ],
        check=True,
    )
    (wheel,) = (tmp_path / "wheels").glob("residuals-*.whl")
    import zipfile

    names = set(zipfile.ZipFile(wheel).namelist())
    assert "residuals/ledger/migrations/0001_foundation.sql" in names
    assert "residuals/platform/migrations/0010_roles.sql" in names
    assert "residuals/deploy/command.py" in names
    assert (context / lock.LOCK_PATH).is_file()


def test_the_lock_pins_every_runtime_dependency_within_its_range(tmp_path: Path) -> None:
    assert lock.lock_problems(ROOT) == []
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "COPY deploy/requirements.lock" in dockerfile
    assert "--no-deps --wheel-dir /wheels --requirement requirements.lock" in dockerfile
    (tmp_path / "deploy").mkdir()
    (tmp_path / "pyproject.toml").write_text(
        '[project]\nname = "x"\ndependencies = ["grpcio>=9", "psycopg[pool]>=3", "PyYAML>=6"]\n'
    )
    (tmp_path / lock.LOCK_PATH).write_text("# header\ngrpcio==1.85.1\npsycopg==3.3.9\n")
    problems = lock.lock_problems(tmp_path)
    assert problems == [
        "deploy/requirements.lock pins grpcio==1.85.1, outside >=9",
        "psycopg[pool] needs psycopg-pool, not in deploy/requirements.lock",
        "PyYAML is not in deploy/requirements.lock",
    ]


def compose() -> dict[str, Any]:
    return chart.compose_resolved(ROOT)


def test_compose_runs_the_whole_system_with_health_checks() -> None:
    model = compose()
    svc = model["services"]
    expected = {s.name for s in services.SERVICES} | {
        "kafka",
        "postgres",
        "init",
        "prometheus",
        "grafana",
        "otel-collector",
        "jaeger",
    }
    assert set(svc) == expected
    for name in [s.name for s in services.SERVICES] + [
        "kafka",
        "postgres",
        "prometheus",
        "grafana",
    ]:
        assert svc[name].get("healthcheck", {}).get("test"), f"{name} has no health check"
    for s in services.SERVICES:
        spec = svc[s.name]
        assert spec["environment"]["OTEL_SERVICE_NAME"] == s.name
        assert spec["command"] == ["python", "-m", s.module]
        if s.kafka is not None or s.database:  # topics and schema first
            assert spec["depends_on"]["init"]["condition"] == "service_completed_successfully"
        else:  # the gateway: after the gRPC services it calls
            assert set(spec["depends_on"]) == {
                t.name for t in services.SERVICES if t.kind is services.Kind.GRPC
            }, s.name
        assert spec["read_only"] is True
        probe = spec["healthcheck"]["test"]
        if s.kind is services.Kind.HTTP:  # the probe the chart's readinessProbe makes
            port = spec["environment"][s.port_env]
            assert probe == ["CMD", "residuals", "probe", "http", f"http://127.0.0.1:{port}/readyz"]
        else:
            assert probe == ["CMD", "residuals", "probe", "grpc", "127.0.0.1:50051"], s.name
        if s.database:  # least privilege holds locally too: each service its own role
            role = roles.database_role(s.name)
            assert spec["environment"]["DATABASE_URL"].startswith(f"postgresql://{role}@")
    assert svc["init"]["command"] == ["residuals", "deploy", "init"]
    assert svc["init"]["build"]["context"] == str(ROOT)
    mounts = {v["target"]: v["source"] for v in svc["prometheus"]["volumes"] if v["type"] == "bind"}
    assert mounts["/etc/prometheus"] == str(ROOT / "deploy" / "prometheus")
    grafana = {v["target"] for v in svc["grafana"]["volumes"]}
    assert "/var/lib/grafana/dashboards" in grafana
    assert "/etc/grafana/provisioning/datasources/traces.yml" in grafana
    assert consistency.settings_problems(consistency.compose_env(model), "compose") == []


def test_compose_shares_a_development_receipt_key_and_names_static_members() -> None:
    from residuals.codecs.receipt import parse_key

    svc = compose()["services"]
    key = svc["ingest"]["environment"]["RESIDUALS_RECEIPT_KEY"]
    assert svc["meter"]["environment"]["RESIDUALS_RECEIPT_KEY"] == key
    assert len(key) == 64 and parse_key(key).startswith(b"DEV ONLY")  # marked as such
    assert svc["meter"]["environment"]["METER_INSTANCE_ID"] == "meter-1"
    assert svc["ledger"]["environment"]["SINK_GROUP_INSTANCE_ID"] == "ledger-1"
    assert "SINK_GROUP_INSTANCE_ID" not in svc["alerts"]["environment"]
    for name in set(svc) - {"ingest", "meter"}:
        assert "RESIDUALS_RECEIPT_KEY" not in (svc[name].get("environment") or {}), name


def test_compose_reads_its_env_file() -> None:
    env = dict(
        line.split("=", 1)
        for line in (ROOT / ".env").read_text().splitlines()
        if line and not line.startswith("#")
    )
    assert env["RESIDUALS_TOPIC_PARTITIONS"] == "6"
    kafka = compose()["services"]["kafka"]
    assert kafka["ports"][0]["published"] == env["KAFKA_HOST_PORT"]


def test_generated_manifests_say_so() -> None:
    for path in K8S.glob("*.yaml"):
        assert path.read_text().startswith("# Generated by `residuals deploy generate`"), path
    assert json.loads((ROOT / catalogue.CATALOGUE_PATH).read_text())["generatedBy"]


def test_the_principals_table_in_deploy_k8s_readme_is_generated() -> None:
    readme = (K8S / "README.md").read_text()
    assert readme == catalogue.with_principals(readme), (
        "deploy/k8s/README.md principals table is stale: run `residuals deploy generate`"
    )
    for service in with_kafka():
        assert f"| `{service.principal}` |" in readme
    assert (
        "No Kafka access (no principal, no KafkaUser, no Kafka settings or egress): "
        "`gateway`." in readme
    )


def _leaf_keys(values: dict[str, Any], prefix: str = "") -> list[str]:
    keys = []
    for key, value in values.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value and key not in {"resources", "env", "secretEnv"}:
            keys += _leaf_keys(value, f"{path}.")
        else:
            keys.append(path)
    return keys


def test_every_chart_value_is_documented_in_the_chart_readme() -> None:
    readme = (ROOT / chart.CHART_DIR / "README.md").read_text()
    undocumented = []
    for key in _leaf_keys(VALUES):
        generic = key
        for service in services.SERVICES:
            generic = generic.replace(f"services.{service.name}.", "services.<name>.")
        if generic.startswith("defaults."):
            generic = "defaults.*"
        candidates = {f"`{key}`", f"`{generic}`", f"`{key.rsplit('.', 1)[0]}`"}
        if key.startswith("services.") and not any(c in readme for c in candidates):
            candidates.add("`services.<name>.*`")
        if not any(c in readme for c in candidates):
            undocumented.append(key)
    assert undocumented == [], f"helm/residuals/README.md does not document {undocumented}"
