"""The one settings class, read from the environment (prefix ``AGENTS_``) and ``.env``."""

from __future__ import annotations

from functools import lru_cache
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

RoutingStrategyName = Literal["least_busy", "round_robin", "capability", "weighted"]
CommaList = Annotated[list[str], NoDecode]


class Settings(BaseSettings):
    """Everything a deployment can set. Built once per process and passed in."""

    model_config = SettingsConfigDict(
        env_prefix="AGENTS_",
        env_file=".env",
        env_file_encoding="utf-8",
        env_nested_delimiter="__",
        extra="ignore",
        frozen=True,
    )

    redis_url: str = Field(
        default="redis://localhost:6379/0",
        description="Redis used as broker, result backend and shared-state store: "
        "redis://, rediss://, or Sentinels as "
        "sentinel://[:password@]host:port[/db];sentinel://host:port...?master_name=NAME.",
    )
    a2a_keys: SecretStr | None = Field(
        default=None,
        description="Comma-separated key_id:secret pairs; the first signs, all verify. "
        "Secrets must be at least 32 bytes.",
    )
    dev_mode: bool = Field(
        default=False,
        description="Local development: allows a built-in A2A key and anonymous Flower.",
    )
    envelope_ttl_s: float = Field(
        default=3600.0, gt=0, description="Lifetime of a signed envelope before it expires."
    )
    envelope_clock_skew_s: float = Field(
        default=60.0,
        ge=0,
        description="How far the clocks of an envelope's signer and its verifier may differ: "
        "an envelope is refused only once it expired this long ago, or if it was signed "
        "more than this far in the verifier's future.",
    )
    max_payload_bytes: int = Field(
        default=1_048_576, gt=0, description="Largest envelope payload accepted, in bytes."
    )
    routing_strategy: RoutingStrategyName = Field(
        default="least_busy", description="How the distributor picks a worker."
    )
    heartbeat_interval_s: float = Field(
        default=2.0, gt=0, description="How often every agent writes its heartbeat."
    )
    heartbeat_timeout_s: float = Field(
        default=6.0, gt=0, description="Silence after which an agent is marked dead."
    )
    health_check_interval_s: float = Field(
        default=2.0, gt=0, description="Beat interval of the coordinator's health check."
    )
    stuck_job_after_s: float = Field(
        default=20.0, gt=0, description="A PENDING job untouched this long is re-sent."
    )
    max_attempts: int = Field(
        default=3, ge=1, description="Dispatches of one job before it is abandoned."
    )
    assign_deadline_s: float = Field(
        default=30.0, gt=0, description="How long a job may wait for an eligible worker."
    )
    assign_retry_s: float = Field(
        default=0.5, gt=0, description="Pause between routing attempts while no worker fits."
    )
    visibility_timeout_s: int = Field(
        default=3600,
        gt=0,
        description="Broker and backend visibility timeout; longer than the longest job.",
    )
    result_ttl_s: int = Field(
        default=86_400, gt=0, description="How long results and finished job records are kept."
    )
    job_log_max_events: int = Field(
        default=1000,
        ge=10,
        description="Events kept in a job's event log (about; older ones are trimmed).",
    )
    worker_id: str | None = Field(
        default=None, description="Worker id; by default taken from the node name or queue."
    )
    worker_task_types: CommaList = Field(
        default_factory=list, description="Task types this worker offers (default: all)."
    )
    worker_tags: CommaList = Field(
        default_factory=list, description="Tags of this worker, matched by job requirements."
    )
    worker_weight: int = Field(default=1, ge=1, description="Weight for weighted routing.")
    worker_stall_timeout_s: float = Field(
        default=60.0,
        ge=0,
        description="A worker whose queue holds messages while it has a free slot and "
        "takes none for this long stops itself (its consumer is stuck), so its jobs are "
        "re-routed and the deployment restarts it; 0 disables the check.",
    )
    handler_modules: CommaList = Field(
        default_factory=list, description="Extra modules imported by workers to add handlers."
    )
    log_json: bool = Field(default=False, description="Log one JSON object per line.")
    log_level: str = Field(default="INFO", description="Log level of the agents' loggers.")
    flower_basic_auth: SecretStr | None = Field(
        default=None, description="user:password required by Flower (outside dev mode)."
    )
    metrics_port: int | None = Field(
        default=None, description="Port of the Prometheus endpoint; unset disables it."
    )

    # --- Gateway (A2A 1.0 server, ``agents gateway``; project/gateway) -----------------
    gateway_host: str = Field(
        default="127.0.0.1", description="Address the A2A gateway listens on."
    )
    gateway_port: int = Field(
        default=8700, ge=1, le=65535, description="Port the A2A gateway listens on."
    )
    gateway_public_url: str | None = Field(
        default=None,
        description="Base URL clients reach the gateway at (behind a load balancer), "
        "advertised in its agent card; default http://{gateway_host}:{gateway_port}.",
    )
    gateway_tokens: SecretStr | None = Field(
        default=None,
        description="Comma-separated caller:token pairs; each call to the gateway must "
        "carry one token as 'Authorization: Bearer <token>' (tokens of at least 16 "
        "characters). Outside dev mode the gateway refuses to start without any.",
    )
    gateway_default_skill: str | None = Field(
        default=None,
        description="Task type of an A2A message whose metadata names no 'skill'; "
        "unset: such a message is rejected.",
    )
    gateway_max_body_bytes: int = Field(
        default=1_048_576, gt=0, description="Largest request body the gateway reads."
    )
    # --- end gateway ---------------------------------------------------------------

    @field_validator("worker_task_types", "worker_tags", "handler_modules", mode="before")
    @classmethod
    def _split_commas(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Return the process-wide settings, read from the environment on first use."""
    return Settings()
