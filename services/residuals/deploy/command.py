"""``residuals deploy generate | check | topics | acls | init`` and ``residuals migrate``."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import yaml

from residuals.platform.config import ConfigError, load

CI_VALUES = "helm/residuals/ci/full-values.yaml"
#: Hand-written, except its principals table (regenerated between markers).
K8S_README = "deploy/k8s/README.md"


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "deploy",
        help="deployment artefacts: generate/check the chart and manifests, topics, ACLs",
        description="Generate and check deploy/k8s, helm/residuals, docker-compose.yml and "
        "the Dockerfile; emit topic and ACL definitions from the code's catalogues.",
    )
    parser.add_argument(
        "--root", type=Path, default=None, help="repository root (default: this checkout)"
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)

    generate = actions.add_parser(
        "generate",
        help="write helm/residuals/files/catalogue.json and deploy/k8s/",
    )
    generate.add_argument(
        "--check", action="store_true", help="write nothing; exit 1 if anything would change"
    )
    generate.set_defaults(handler=_guard(_generate))

    check = actions.add_parser(
        "check",
        help="everything CI checks: generated files fresh, helm lint, rendered objects "
        "valid, chart/code consistency, hadolint, docker compose config",
    )
    check.set_defaults(handler=_guard(_check))

    lock = actions.add_parser(
        "lock",
        help="resolve pyproject.toml's dependencies (needs PyPI) into deploy/requirements.lock",
    )
    lock.set_defaults(handler=_guard(_lock))

    settings = actions.add_parser(
        "settings",
        help="print every service's environment variables (Markdown), from the code",
    )
    settings.set_defaults(handler=_guard(_settings))

    topics = actions.add_parser("topics", help="print topic definitions from the catalogue")
    topics.add_argument("--format", choices=("strimzi", "json"), default="strimzi")
    topics.add_argument("--partitions", type=int, default=12)
    topics.add_argument("--replicas", type=int, default=3)
    topics.add_argument("--min-insync-replicas", type=int, default=2)
    topics.add_argument("--prefix", default="", help="RESIDUALS_TOPIC_PREFIX")
    topics.add_argument("--cluster", default="residuals", help="strimzi.io/cluster")
    topics.set_defaults(handler=_guard(_topics))

    acls = actions.add_parser(
        "acls",
        help="print a kafka-acls.sh script: SCRAM principals and ACLs per service and vendor",
    )
    acls.add_argument("--vendor", action="append", default=[], metavar="ID")
    acls.add_argument("--prefix", default="", help="RESIDUALS_TOPIC_PREFIX")
    acls.add_argument("--mechanism", default="SCRAM-SHA-512")
    acls.add_argument(
        "--vendor-producer-byte-rate", type=int, default=None, help="quota per vendor (bytes/s)"
    )
    acls.set_defaults(handler=_guard(_acls))

    init = actions.add_parser(
        "init",
        help="one-shot job: wait for Kafka and PostgreSQL, create topics, apply migrations",
    )
    init.add_argument("--skip-topics", action="store_true")
    init.add_argument("--skip-migrations", action="store_true")
    init.set_defaults(handler=_guard(_init))


def register_migrate(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "migrate",
        help="apply pending PostgreSQL migrations (needs only DATABASE_URL)",
        description="Apply the schema migrations shipped in the package to DATABASE_URL, "
        "waiting up to RESIDUALS_INIT_WAIT_SECONDS for the database. Idempotent.",
    )
    parser.set_defaults(handler=_guard(_migrate))


Handler = Callable[[argparse.Namespace], int]


def _guard(action: Handler) -> Handler:
    def run(args: argparse.Namespace) -> int:
        import psycopg
        from confluent_kafka import KafkaException

        from residuals.deploy.chart import DeployError
        from residuals.platform.migrations import MigrationError

        try:
            return action(args)
        except (
            DeployError,
            ConfigError,
            MigrationError,
            ValueError,
            psycopg.Error,
            KafkaException,
        ) as exc:
            print(f"residuals {args.command}: {exc}", file=sys.stderr)
            return 1

    return run


def _root(args: argparse.Namespace) -> Path:
    if args.root is not None:
        return Path(args.root).resolve()
    cwd = Path.cwd()
    if (cwd / "helm" / "residuals" / "Chart.yaml").is_file():
        return cwd
    from residuals.stack.settings import repo_root

    return repo_root()


# --- generate / check --------------------------------------------------------------------


def generated_files(root: Path) -> dict[str, str]:
    """{path relative to root: content} of the single-file generated artefacts."""
    from residuals.deploy.catalogue import CATALOGUE_PATH, catalogue_json, with_principals

    readme = root / K8S_README
    return {
        CATALOGUE_PATH: catalogue_json(),
        K8S_README: with_principals(readme.read_text()),
    }


def _generate(args: argparse.Namespace) -> int:
    from residuals.deploy import chart

    root = _root(args)
    stale: list[str] = []
    files = generated_files(root)
    for rel, text in files.items():
        path = root / rel
        if path.is_file() and path.read_text() == text:
            continue
        stale.append(rel)
        if not args.check:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
    # Rendered after the catalogue is written: the templates read it.
    wanted = chart.render_k8s(root)
    k8s = root / chart.K8S_DIR
    drift = chart.compare_dir(k8s, wanted, chart.HAND_WRITTEN)
    if not drift.clean:
        stale.append(f"{chart.K8S_DIR}/ ({drift.describe()})")
        if not args.check:
            chart.write_dir(k8s, wanted, chart.HAND_WRITTEN)
    if args.check:
        if stale:
            print(
                "generated deployment files are stale: " + "; ".join(stale) + "\n"
                "run `residuals deploy generate` and commit the result",
                file=sys.stderr,
            )
            return 1
        print("generated deployment files are up to date")
        return 0
    for rel in stale:
        print(f"wrote {rel}")
    if not stale:
        print("generated deployment files were already up to date")
    return 0


def _check(args: argparse.Namespace) -> int:
    from residuals.deploy import chart, consistency

    root = _root(args)
    failures: list[str] = []

    def step(name: str, action: Callable[[], Any]) -> None:
        try:
            problems = action()
        except chart.DeployError as exc:
            problems = [str(exc)]
        except Exception as exc:  # one broken check must not hide the others
            problems = [f"{type(exc).__name__}: {exc}"]
        if problems:
            failures.append(name)
            print(f"FAIL {name}")
            for problem in problems:
                print(f"     {problem}")
        else:
            print(f"ok   {name}")

    helm = chart.ensure_helm()
    ci_values = root / CI_VALUES

    def fresh() -> list[str]:
        gen = argparse.Namespace(root=root, check=True, command="deploy")
        return [] if _generate(gen) == 0 else ["see above"]

    step("generated files are fresh (catalogue.json, deploy/k8s)", fresh)
    step("helm lint --strict (default values)", lambda: _quiet(chart.helm_lint(root, helm=helm)))
    step(
        "helm lint --strict (ci/full-values.yaml)",
        lambda: _quiet(chart.helm_lint(root, values=[ci_values], helm=helm)),
    )
    default_docs = list(chart.documents(chart.helm_template(root, helm=helm)))
    full_docs = list(chart.documents(chart.helm_template(root, values=[ci_values], helm=helm)))
    k8s_files = sorted((root / chart.K8S_DIR).glob("*.yaml"))
    for version in chart.KUBERNETES_VERSIONS:
        step(
            f"deploy/k8s valid for Kubernetes {version}",
            partial(_validate_files, k8s_files, version),
        )
        step(
            f"chart with ci/full-values.yaml valid for Kubernetes {version}",
            partial(_validate_docs, full_docs, version),
        )
    step(
        "Strimzi KafkaTopic/KafkaUser fields",
        lambda: consistency.strimzi_problems(default_docs + full_docs),
    )
    step("service environment matches each settings dataclass", lambda: _env(default_docs))
    step(
        "secure by default: Kafka SASL, own database role, gRPC TLS and receipt key from Secrets",
        lambda: consistency.security_problems(default_docs),
    )
    step(
        "static group members are StatefulSets with their pod name as id; HPA targets exist",
        lambda: consistency.workload_problems(default_docs + full_docs),
    )
    step(
        "Kafka ACLs cover the topics each service's code uses",
        lambda: consistency.acl_problems(root / "services" / "residuals"),
    )
    step("deploy/requirements.lock pins every runtime dependency", lambda: _lock_check(root))
    step("hadolint Dockerfile", lambda: _quiet(chart.hadolint(root)))
    step("docker compose config", lambda: _quiet(chart.compose_config(root)))
    step(
        "docker-compose service environment matches each settings dataclass",
        lambda: consistency.settings_problems(
            consistency.compose_env(chart.compose_resolved(root)), "docker-compose.yml"
        ),
    )
    if failures:
        print(f"\ndeploy check: {len(failures)} failed: {', '.join(failures)}")
        return 1
    print("\ndeploy check: all passed")
    return 0


def _lock_check(root: Path) -> list[str]:
    from residuals.deploy.lock import lock_problems

    return lock_problems(root)


def _quiet(_output: str) -> list[str]:
    return []


def _validate_files(paths: list[Path], version: str) -> list[str]:
    from residuals.deploy import chart

    chart.kubernetes_validate(paths, version)
    return []


def _env(docs: list[dict[str, Any]]) -> list[str]:
    from residuals.deploy import consistency

    return consistency.env_problems(docs)


def _validate_docs(docs: list[dict[str, Any]], version: str) -> list[str]:
    import tempfile

    from residuals.deploy import chart

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "rendered.yaml"
        path.write_text(yaml.safe_dump_all(docs, sort_keys=False))
        chart.kubernetes_validate([path], version)
    return []


# --- topics / acls / init / migrate -------------------------------------------------------


def _topics(args: argparse.Namespace) -> int:
    from residuals.deploy.catalogue import strimzi_topic, topic_json
    from residuals.platform import topics

    if args.format == "json":
        print(json.dumps([topic_json(t) for t in topics.ALL], indent=2))
        return 0
    docs = [
        strimzi_topic(
            t,
            partitions=args.partitions,
            replicas=args.replicas,
            cluster=args.cluster,
            prefix=args.prefix,
            min_insync_replicas=args.min_insync_replicas,
        )
        for t in topics.ALL
    ]
    print(yaml.safe_dump_all(docs, sort_keys=False, explicit_start=True), end="")
    return 0


def _lock(args: argparse.Namespace) -> int:
    from residuals.deploy.lock import LOCK_PATH, resolve

    root = _root(args)
    try:
        text = resolve(root)
    except RuntimeError as exc:
        raise chart_error(str(exc)) from exc
    (root / LOCK_PATH).write_text(text)
    print(f"wrote {LOCK_PATH} ({text.count('==')} pins)")
    return 0


def chart_error(message: str) -> Exception:
    from residuals.deploy.chart import DeployError

    return DeployError(message)


def _settings(_args: argparse.Namespace) -> int:
    from residuals.deploy.settings_doc import settings_markdown

    print(settings_markdown(), end="")
    return 0


def _acls(args: argparse.Namespace) -> int:
    from residuals.deploy.kafka_admin import acl_script

    print(
        acl_script(
            args.vendor,
            topic_prefix=args.prefix,
            mechanism=args.mechanism,
            vendor_producer_byte_rate=args.vendor_producer_byte_rate,
        ),
        end="",
    )
    return 0


def _log(message: str) -> None:
    print(message, flush=True)


def _init(args: argparse.Namespace) -> int:
    from residuals.deploy.init import InitSettings, run_migrations, run_topics

    settings = load(InitSettings)
    if not args.skip_topics:
        run_topics(settings, _log)
    if not args.skip_migrations:
        run_migrations(settings.postgres, settings.wait_seconds, _log, settings.role_passwords_dir)
    return 0


def _migrate(args: argparse.Namespace) -> int:
    from residuals.deploy.init import MigrateSettings, run_migrations

    settings = load(MigrateSettings)
    run_migrations(settings.postgres, settings.wait_seconds, _log, settings.role_passwords_dir)
    return 0
