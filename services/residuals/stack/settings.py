"""Settings of the local stack, read with the shared typed config loader."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from residuals.platform.config import env

HOST = "127.0.0.1"
DATABASE = "residuals"
DATABASE_USER = "residuals"


def repo_root() -> Path:
    """The checkout this package runs from (editable install), else the working directory.

    Each clone gets its own ``.stack`` this way, whichever directory a command runs in.
    """
    candidate = Path(__file__).resolve().parents[3]
    if (candidate / "pyproject.toml").is_file() and (candidate / "services").is_dir():
        return candidate
    return Path.cwd()


@dataclass(frozen=True)
class StackSettings:
    stack_dir_override: Path | None = env(
        "RESIDUALS_STACK_DIR", None, help="where the local stack keeps data (default <repo>/.stack)"
    )
    kafka_port: int = env(
        "RESIDUALS_KAFKA_PORT", 19092, help="local Kafka client port", minimum=1, maximum=65535
    )
    kafka_controller_port: int = env(
        "RESIDUALS_KAFKA_CONTROLLER_PORT",
        19093,
        help="local Kafka KRaft controller port",
        minimum=1,
        maximum=65535,
    )
    postgres_port: int = env(
        "RESIDUALS_POSTGRES_PORT", 15432, help="local PostgreSQL port", minimum=1, maximum=65535
    )
    topic_partitions: int = env(
        "RESIDUALS_TOPIC_PARTITIONS", 6, help="partitions per topic on the local broker", minimum=1
    )

    @property
    def stack_dir(self) -> Path:
        base = self.stack_dir_override or repo_root() / ".stack"
        return base.expanduser().resolve()

    @property
    def bootstrap_servers(self) -> str:
        return f"{HOST}:{self.kafka_port}"

    @property
    def dsn(self) -> str:
        return f"postgresql://{DATABASE_USER}@{HOST}:{self.postgres_port}/{DATABASE}"

    def exports(self) -> dict[str, str]:
        """Variables a service needs to use this stack (what `stack up` prints)."""
        return {
            "KAFKA_BOOTSTRAP_SERVERS": self.bootstrap_servers,
            "DATABASE_URL": self.dsn,
        }
