"""``residuals migrate``: the schema migrations of a deployment (only DATABASE_URL needed)."""

from __future__ import annotations

from residuals.deploy.command import register_migrate as register

__all__ = ["register"]
