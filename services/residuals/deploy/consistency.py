"""Cross-checks between the rendered chart and the code it deploys.

* every environment variable the chart gives a service is one that service's settings
  dataclass reads, and every variable it must have (required, or whose default only suits
  a developer's machine) is given;
* the catalogue's ``database`` flag agrees with whether the settings have PostgreSQL;
* every catalogue topic a service's code names is covered by its Kafka ACLs;
* Strimzi ``KafkaTopic`` / ``KafkaUser`` objects use only fields and values the CRDs
  accept (the core objects are validated by ``kubernetes-validate``).
* with its default values the chart is secure: every service has its own Kafka principal
  and PostgreSQL role, the gRPC APIs serve TLS from a mounted Secret, and the services that
  stamp or verify receipt times share the receipt key from a Secret;
* workloads hang together: a static consumer-group member (StatefulSet) takes its
  membership id from its stable pod name and names a headless Service, nothing else sets
  that id, and every HorizontalPodAutoscaler targets a workload of the kind rendered.

Each function returns a list of problems (empty = consistent), so tests and
``residuals deploy check`` report them all at once.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from residuals.deploy.services import SERVICES, Kind, Service, settings_class
from residuals.platform import topics
from residuals.platform.config import describe

#: Variables whose defaults point at a developer's local stack: a deployment must set them.
MUST_SET = ("KAFKA_BOOTSTRAP_SERVERS", "DATABASE_URL", "OTEL_SERVICE_NAME", "METRICS_PORT")
#: The kinds the chart runs a service's pods as.
WORKLOAD_KINDS = ("Deployment", "StatefulSet")
#: The secret ingest and meter share (residuals.platform.config.ReceiptSettings).
RECEIPT_KEY = "RESIDUALS_RECEIPT_KEY"


def _component(doc: Mapping[str, Any]) -> str | None:
    labels = doc.get("metadata", {}).get("labels", {}) or {}
    value = labels.get("app.kubernetes.io/component")
    return str(value) if value is not None else None


def _service(doc: Mapping[str, Any]) -> Service | None:
    """The catalogue service a workload runs (None for any other object)."""
    if doc.get("kind") not in WORKLOAD_KINDS:
        return None
    name = _component(doc)
    return next((s for s in SERVICES if s.name == name), None)


def _container_env(workload: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    (container,) = workload["spec"]["template"]["spec"]["containers"]
    return {e["name"]: e for e in container.get("env", [])}


def container_env(docs: Iterable[Mapping[str, Any]]) -> dict[str, set[str]]:
    """{service: names of every variable its container gets} from ConfigMaps + env."""
    config_maps: dict[str, set[str]] = {}
    env: dict[str, set[str]] = {}
    for doc in docs:
        component = _component(doc)
        if component is None:
            continue
        if doc.get("kind") == "ConfigMap":
            config_maps[component] = set((doc.get("data") or {}).keys())
        elif doc.get("kind") in WORKLOAD_KINDS:
            names: set[str] = set()
            for container in doc["spec"]["template"]["spec"]["containers"]:
                names |= {item["name"] for item in container.get("env", [])}
            env[component] = names
    return {name: env[name] | config_maps.get(name, set()) for name in env}


def env_problems(docs: Iterable[Mapping[str, Any]]) -> list[str]:
    """Problems of the rendered chart's workloads (see :func:`settings_problems`)."""
    return settings_problems(container_env(list(docs)), "the chart")


def compose_env(compose: Mapping[str, Any]) -> dict[str, set[str]]:
    """{service: variable names} of the catalogue services in a (``config``-resolved)
    compose."""
    names = {s.name for s in SERVICES}
    return {
        name: set((spec.get("environment") or {}).keys())
        for name, spec in (compose.get("services") or {}).items()
        if name in names
    }


def settings_problems(given: Mapping[str, set[str]], where: str) -> list[str]:
    """Variables ``where`` gives each service vs what its settings dataclass reads."""
    problems: list[str] = []
    for service in SERVICES:
        if service.name not in given:
            problems.append(f"{service.name}: {where} does not run it")
            continue
        cls = settings_class(service.name)
        if cls is None:
            continue  # not landed: nothing to compare with yet
        rows = describe(cls)
        known = {var for var, _, _ in rows}
        required = {var for var, default, _ in rows if default == "(required)"}
        names = given[service.name]
        for var in sorted(names - known):
            problems.append(
                f"{service.name}: {where} sets {var}, which {cls.__name__} does not read"
            )
        for var in sorted((required | (known & set(MUST_SET))) - names):
            problems.append(f"{service.name}: {cls.__name__} needs {var}; {where} omits it")
        flags = (
            ("database", service.database, "DATABASE_URL"),
            ("receipt_key", service.receipt_key, RECEIPT_KEY),
        )
        for flag, value, var in flags:
            if (var in known) != value:
                problems.append(
                    f"{service.name}: {flag}={value} in residuals.deploy.services "
                    f"but {cls.__name__} {'reads' if var in known else 'lacks'} {var}"
                )
        if service.port_env not in known:
            problems.append(
                f"{service.name}: port_env={service.port_env} in residuals.deploy.services "
                f"but {cls.__name__} does not read it"
            )
        if service.member_id is not None and service.member_id not in known:
            problems.append(
                f"{service.name}: member_id={service.member_id} in residuals.deploy.services "
                f"but {cls.__name__} does not read it"
            )
    return problems


# --- topics named in code vs ACLs ---------------------------------------------------------

_TOPIC_CONSTANTS = {
    name
    for name, value in vars(topics).items()
    if isinstance(value, topics.Topic) and name.isupper()
}


def topics_named(package_dir: Path) -> set[str]:
    """Catalogue constants (``USAGE``, ``LICENCES``...) a package's code refers to.

    Static: ``from residuals.platform.topics import X`` and ``topics.X`` attribute uses.
    """
    found: set[str] = set()
    for path in package_dir.rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module == "residuals.platform.topics":
                found |= {a.name for a in node.names if a.name in _TOPIC_CONSTANTS}
            elif (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id == "topics"
                and node.attr in _TOPIC_CONSTANTS
            ):
                found.add(node.attr)
    return found


def acl_problems(services_dir: Path, services: Iterable[Service] = SERVICES) -> list[str]:
    problems = []
    for service in services:
        package = services_dir / service.name
        if not package.is_dir():
            continue
        access = service.kafka
        granted = (
            set()
            if access is None
            else {t.name for t in (*access.reads, *access.writes, *access.mentions)}
        )
        for constant in sorted(topics_named(package)):
            topic: topics.Topic = getattr(topics, constant)
            if topic.name not in granted:
                problems.append(
                    f"{service.name}: code uses topics.{constant} ({topic.name}) but its "
                    "Kafka access in residuals/deploy/services.py does not grant it"
                )
    return problems


# --- Strimzi custom resources ------------------------------------------------------------

_ACL_RESOURCES = {"topic", "group", "cluster", "transactionalId"}
_ACL_PATTERNS = {"literal", "prefix"}
_ACL_OPERATIONS = {
    "Read",
    "Write",
    "Create",
    "Delete",
    "Alter",
    "Describe",
    "ClusterAction",
    "AlterConfigs",
    "DescribeConfigs",
    "IdempotentWrite",
    "All",
}
_STRIMZI_VERSIONS = {"kafka.strimzi.io/v1beta2", "kafka.strimzi.io/v1"}


def _only(where: str, obj: Mapping[str, Any], allowed: set[str]) -> list[str]:
    return [f"{where}: unknown field {key!r}" for key in obj if key not in allowed]


def strimzi_problems(docs: Iterable[Mapping[str, Any]]) -> list[str]:
    """Structural checks of KafkaTopic/KafkaUser against the fields Strimzi's CRDs define."""
    problems: list[str] = []
    for doc in docs:
        kind = doc.get("kind")
        if kind not in {"KafkaTopic", "KafkaUser"}:
            continue
        name = f"{kind}/{doc.get('metadata', {}).get('name')}"
        if doc.get("apiVersion") not in _STRIMZI_VERSIONS:
            problems.append(f"{name}: apiVersion {doc.get('apiVersion')!r}")
        if not doc.get("metadata", {}).get("labels", {}).get("strimzi.io/cluster"):
            problems.append(f"{name}: no strimzi.io/cluster label (no operator would own it)")
        spec = doc.get("spec") or {}
        if kind == "KafkaTopic":
            problems += _only(name, spec, {"topicName", "partitions", "replicas", "config"})
            for key in ("partitions", "replicas"):
                if not isinstance(spec.get(key), int) or spec[key] < 1:
                    problems.append(f"{name}: spec.{key} must be a positive integer")
            for key, value in (spec.get("config") or {}).items():
                if not isinstance(value, (str, int, bool)):
                    problems.append(f"{name}: config {key} has a {type(value).__name__}")
            continue
        problems += _only(name, spec, {"authentication", "authorization", "quotas"})
        if (spec.get("authentication") or {}).get("type") not in {"scram-sha-512", "tls"}:
            problems.append(f"{name}: authentication.type")
        authorization = spec.get("authorization") or {}
        if authorization.get("type") != "simple":
            problems.append(f"{name}: authorization.type must be simple")
        for i, acl in enumerate(authorization.get("acls") or []):
            where = f"{name} acl {i}"
            problems += _only(where, acl, {"resource", "operations", "type", "host"})
            resource = acl.get("resource") or {}
            problems += _only(where, resource, {"type", "name", "patternType"})
            if resource.get("type") not in _ACL_RESOURCES:
                problems.append(f"{where}: resource.type {resource.get('type')!r}")
            if resource.get("type") != "cluster":
                if not resource.get("name"):
                    problems.append(f"{where}: resource without a name")
                if resource.get("patternType") not in _ACL_PATTERNS:
                    problems.append(f"{where}: patternType {resource.get('patternType')!r}")
            ops = acl.get("operations") or []
            if not ops or not set(ops) <= _ACL_OPERATIONS:
                problems.append(f"{where}: operations {ops!r}")
        for key, value in (spec.get("quotas") or {}).items():
            if key not in {"producerByteRate", "consumerByteRate", "requestPercentage"}:
                problems.append(f"{name}: quota {key!r}")
            elif not isinstance(value, int) or value < 0:
                problems.append(f"{name}: quota {key} must be a non-negative integer")
    return problems


# --- secure by default -------------------------------------------------------------------


def _config_maps(docs: Iterable[Mapping[str, Any]]) -> dict[str, dict[str, str]]:
    return {
        component: dict(doc.get("data") or {})
        for doc in docs
        if doc.get("kind") == "ConfigMap" and (component := _component(doc)) is not None
    }


def _from_secret(env: Mapping[str, Any], name: str) -> bool:
    return bool((env.get(name) or {}).get("valueFrom", {}).get("secretKeyRef"))


def _secret_mounts(pod: Mapping[str, Any], container: Mapping[str, Any]) -> list[str]:
    secret_volumes = {v["name"] for v in pod.get("volumes", []) if "secret" in v}
    return [
        str(m["mountPath"])
        for m in container.get("volumeMounts", [])
        if m["name"] in secret_volumes and m.get("readOnly")
    ]


def security_problems(docs: Iterable[Mapping[str, Any]]) -> list[str]:
    """What the chart's defaults must give every service: its own SCRAM principal over
    Kafka (and nothing Kafka's without Kafka access), its own PostgreSQL role, and (gRPC
    APIs) TLS from a mounted Secret, with the kubelet probing a port it can speak to
    (HTTP services: HTTP probes on their own port)."""
    from residuals.platform.roles import database_role

    docs = list(docs)
    config = _config_maps(docs)
    problems: list[str] = []
    for doc in docs:
        service = _service(doc)
        if service is None:
            continue
        name = service.name
        pod = doc["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        env = _container_env(doc)
        data = config.get(name, {})
        if service.kafka is None:
            # No Kafka access: no Kafka settings and no credentials either.
            given = sorted(v for v in (*data, *env) if v.startswith("KAFKA_"))
            if given:
                problems.append(f"{name}: has no Kafka access but gets {', '.join(given)}")
        else:
            protocol = data.get("KAFKA_SECURITY_PROTOCOL")
            if not (protocol or "").startswith("SASL_"):
                problems.append(f"{name}: Kafka without SASL ({protocol})")
            if data.get("KAFKA_SASL_USERNAME") != service.principal:
                problems.append(f"{name}: not Kafka principal {service.principal}")
            if not _from_secret(env, "KAFKA_SASL_PASSWORD"):
                problems.append(f"{name}: KAFKA_SASL_PASSWORD does not come from a Secret")
        if service.database:
            if data.get("DATABASE_USER") != database_role(name):
                problems.append(f"{name}: does not connect as {database_role(name)}")
            if not _from_secret(env, "DATABASE_PASSWORD"):
                problems.append(f"{name}: DATABASE_PASSWORD does not come from a Secret")
        if service.receipt_key and not _from_secret(env, RECEIPT_KEY):
            problems.append(f"{name}: {RECEIPT_KEY} does not come from a Secret")
        if service.kind is Kind.HTTP:
            problems += _http_probe_problems(service, container, data)
        if service.kind is not Kind.GRPC:
            continue
        mounts = _secret_mounts(pod, container)
        for var in ("GRPC_TLS_CERT", "GRPC_TLS_KEY"):
            path = data.get(var, "")
            if not any(path.startswith(f"{m}/") for m in mounts):
                problems.append(f"{name}: {var}={path!r} is not in a mounted Secret")
        grpc_port = next(p["containerPort"] for p in container["ports"] if p["name"] == "grpc")
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            port = container[probe]["grpc"]["port"]
            if port == grpc_port or str(port) != data.get("GRPC_HEALTH_PORT"):
                problems.append(f"{name}: {probe} is not on the plaintext health port")
    return problems


#: An HTTP service's probes: alive (the process answers) and ready (it can serve).
HTTP_PROBES = {"startupProbe": "/healthz", "readinessProbe": "/readyz", "livenessProbe": "/healthz"}


def _http_probe_problems(
    service: Service, container: Mapping[str, Any], data: Mapping[str, str]
) -> list[str]:
    """An HTTP service is probed over HTTP on the port it serves (port_env), not gRPC."""
    name = service.name
    problems: list[str] = []
    ports = {p["name"]: p["containerPort"] for p in container.get("ports", [])}
    if "grpc" in ports:
        problems.append(f"{name}: an HTTP service with a grpc container port")
    if str(ports.get("http")) != data.get(service.port_env):
        problems.append(
            f"{name}: container port http ({ports.get('http')}) is not "
            f"{service.port_env} ({data.get(service.port_env)})"
        )
    for probe, path in HTTP_PROBES.items():
        get = (container.get(probe) or {}).get("httpGet") or {}
        if get.get("path") != path or get.get("port") != "http":
            problems.append(f"{name}: {probe} is not an HTTP GET of {path} on port http")
    return problems


# --- workloads and static group membership ----------------------------------------------


def _from_pod_name(env: Mapping[str, Any], name: str) -> bool:
    ref = (env.get(name) or {}).get("valueFrom", {}).get("fieldRef") or {}
    return bool(ref.get("fieldPath") == "metadata.name")


def workload_problems(docs: Iterable[Mapping[str, Any]]) -> list[str]:
    """A static consumer-group member must keep its id across restarts and rollouts and
    no two replicas may share one: only a StatefulSet's pod name gives that, so

    * a StatefulSet runs a service with a membership variable (``member_id``), sets it from
      ``metadata.name``, names a headless Service selecting its pods, starts its pods in
      parallel (they are independent group members) and rolls them one by one;
    * a Deployment leaves the variable unset (dynamic membership), in env and ConfigMap;
    * every HorizontalPodAutoscaler targets a workload of the kind and name rendered.
    """
    docs = list(docs)
    config = _config_maps(docs)
    workloads = [(d, s) for d in docs if (s := _service(d)) is not None]
    rendered = {(d["kind"], d["metadata"]["name"]) for d, _ in workloads}
    headless = {
        d["metadata"]["name"]: d
        for d in docs
        if d.get("kind") == "Service" and (d.get("spec") or {}).get("clusterIP") == "None"
    }
    problems: list[str] = []
    for doc, service in workloads:
        name, var = service.name, service.member_id
        env = _container_env(doc)
        spec = doc["spec"]
        if doc["kind"] == "Deployment":
            if var is not None and (var in env or var in config.get(name, {})):
                problems.append(
                    f"{name}: {var} is set on a Deployment, whose pod names change with every "
                    "rollout (a static id must be one replica's, stable): use a StatefulSet"
                )
            continue
        if var is None:
            problems.append(f"{name}: a StatefulSet, but it has no membership id to keep stable")
        elif not _from_pod_name(env, var):
            problems.append(f"{name}: {var} does not come from the pod name (metadata.name)")
        service_name = spec.get("serviceName")
        governing = headless.get(service_name)
        labels = spec["template"]["metadata"].get("labels") or {}
        if governing is None:
            problems.append(f"{name}: serviceName {service_name!r} is not a headless Service")
        elif not (governing["spec"].get("selector") or {}).items() <= labels.items():
            problems.append(f"{name}: headless Service {service_name} does not select its pods")
        if spec.get("podManagementPolicy") != "Parallel":
            problems.append(f"{name}: podManagementPolicy is not Parallel")
        if (spec.get("updateStrategy") or {}).get("type") != "RollingUpdate":
            problems.append(f"{name}: updateStrategy is not RollingUpdate")
    for doc in docs:
        if doc.get("kind") != "HorizontalPodAutoscaler":
            continue
        ref = doc["spec"]["scaleTargetRef"]
        if (ref.get("kind"), ref.get("name")) not in rendered:
            problems.append(
                f"HorizontalPodAutoscaler/{doc['metadata']['name']}: targets "
                f"{ref.get('kind')}/{ref.get('name')}, which is not rendered"
            )
    return problems
