"""The `residuals` console script, and the operators' commands in this package.

The operators' tools (licences, finance, dead letters and quarantine, audit) live here in
``residuals.cli``; running a service (``residuals meter run``...) and the developer tools
(stack, replay, protos, deploy, demo) live with the code they drive. Each group exposes
``register(subparsers)`` (or the function named after a colon); this module only lists
them, so adding a command never means editing another's code. Groups are imported lazily
by name so `residuals replay` does not pay for Kafka imports.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# command name -> module that defines ``register(subparsers)`` (or module:function)
COMMAND_MODULES: dict[str, str] = {
    "replay": "residuals.replay.command",
    "stack": "residuals.stack.command",
    "protos": "residuals.platform.protogen",
    "alerts": "residuals.alerts.command",
    "notify": "residuals.notify.command",
    "ingest": "residuals.ingest.command",
    "gateway": "residuals.gateway.command",
    "dlq": "residuals.cli.dlq",
    "licensing": "residuals.licensing.command",
    "licences": "residuals.cli.licences",
    "approvals": "residuals.cli.approvals",
    "audit": "residuals.cli.audit",
    "payouts": "residuals.payouts.command",
    "finance": "residuals.cli.finance",
    "verify": "residuals.cli.verify",
    "deploy": "residuals.deploy.command",
    "migrate": "residuals.deploy.command:register_migrate",
    "probe": "residuals.deploy.probe",
    "meter": "residuals.meter.command",
    "ledger": "residuals.ledger.command",
    "demo": "residuals.demo.command",
}


def version() -> str:
    """The installed package's version (``pyproject.toml``), or that it is not installed."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed

    try:
        return installed("residuals")
    except PackageNotFoundError:  # run from a checkout without `pip install -e .`
        return "unknown (not installed)"


def build_parser(commands: Sequence[str] | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="residuals",
        description="Per-use royalty metering for licensed AI likenesses.",
    )
    parser.add_argument("--version", action="version", version=f"residuals {version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in commands or COMMAND_MODULES:
        module, _, function = COMMAND_MODULES[name].partition(":")
        getattr(importlib.import_module(module), function or "register")(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    # Import only the requested group when it is known: keeps start-up fast.
    first = next((a for a in args_list if not a.startswith("-")), None)
    if first is None and "--version" in args_list:
        print(f"residuals {version()}")
        return 0
    parser = build_parser([first] if first in COMMAND_MODULES else None)
    args = parser.parse_args(args_list)
    result = args.handler(args)
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
