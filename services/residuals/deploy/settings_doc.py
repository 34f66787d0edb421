"""``residuals deploy settings``: every environment variable of every service.

Printed from :func:`residuals.platform.config.describe` on demand rather than committed,
so the operator's reference is always what the installed code reads. The chart's side is
checked instead (:mod:`.consistency`): it may set only variables a service reads and
must set the ones a deployment needs.
"""

from __future__ import annotations

from typing import Any

from residuals.deploy.init import InitSettings, MigrateSettings
from residuals.deploy.services import SERVICES, settings_class
from residuals.platform.config import describe


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _table(cls: type[Any]) -> list[str]:
    lines = ["| variable | default | meaning |", "|---|---|---|"]
    for var, default, text in describe(cls):
        lines.append(f"| `{var}` | `{_cell(default)}` | {_cell(text)} |")
    return lines


def settings_markdown() -> str:
    out = [
        "# Service settings",
        "",
        "Printed by `residuals deploy settings` from each service's settings dataclass",
        "(`residuals.<service>.config` or `.settings`). Every service reads only its",
        "environment; the Helm chart sets these through a ConfigMap per service",
        "(`services.<name>.env`) and Secret references (`DATABASE_URL`, API keys, Kafka",
        "credentials). A missing or malformed value stops the service at start-up with",
        "the variable's name.",
        "",
    ]
    for service in SERVICES:
        out.append(f"## {service.name}")
        out.append("")
        out.append(f"{service.summary}. Runs as `python -m {service.module}`.")
        out.append("")
        cls = settings_class(service.name)
        if cls is None:
            out.append(
                f"_Not in this tree yet: its table appears when `{service.module}.config` "
                "(or `.settings`) lands._"
            )
        else:
            out.append(f"Settings class: `{cls.__module__}.{cls.__qualname__}`.")
            out.append("")
            out += _table(cls)
        out.append("")
    out.append("## Deployment jobs")
    out.append("")
    out.append("`residuals migrate` (Kubernetes pre-install/pre-upgrade hook) reads:")
    out.append("")
    out += _table(MigrateSettings)
    out.append("")
    out.append("`residuals deploy init` (docker-compose `init`; clusters without Strimzi) reads:")
    out.append("")
    out += _table(InitSettings)
    return "\n".join(out) + "\n"
