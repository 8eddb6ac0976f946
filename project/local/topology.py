"""The deployment's processes, one source of truth for compose and local runs.

``docker-compose.yml`` declares these same commands (a test checks it), and
:class:`~project.local.deployment.LocalDeployment` runs them as local processes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from project.core.constants import COORDINATOR_QUEUE, DISTRIBUTOR_QUEUE, worker_queue


@dataclass(frozen=True)
class Service:
    """One process of the deployment."""

    name: str
    """Service name (compose service, log file, node name)."""
    command: tuple[str, ...]
    """argv: ``celery ...``, or ``python -m ...`` (run with the deployment's Python)."""
    env: dict[str, str] = field(default_factory=dict)
    """Environment on top of the deployment's."""
    tier: str = ""
    """``coordinator``, ``distributor``, ``worker``, ``beat``, ``flower`` or ``gateway``."""


def worker_service(
    worker_id: str, *, concurrency: int = 2, tags: tuple[str, ...] = (), **env: str
) -> Service:
    """A worker-tier process consuming ``worker.<id>``."""
    extra = dict(env)
    if tags:
        extra["AGENTS_WORKER_TAGS"] = ",".join(tags)
    return Service(
        name=worker_id,
        command=_celery_worker(worker_queue(worker_id), f"{worker_id}@%h", concurrency),
        env=extra,
        tier="worker",
    )


def _celery_worker(queue: str, node: str, concurrency: int) -> tuple[str, ...]:
    return (
        "celery",
        "-A",
        "project",
        "worker",
        "-Q",
        queue,
        "-n",
        node,
        "-c",
        str(concurrency),
        "--without-gossip",
        "--without-mingle",
        "-l",
        "INFO",
    )


def default_topology(
    *,
    workers: tuple[str, ...] = ("w1", "w2", "w3"),
    distributors: int = 2,
    concurrency: int = 2,
    beat: bool = True,
    flower: bool = False,
    flower_port: int = 5555,
    gateway: bool = False,
    gateway_port: int = 8700,
) -> list[Service]:
    """Coordinator (+ beat), distributors and workers (+ Flower, + the A2A gateway), as
    compose declares them.

    Flower's address and port come from its environment (``FLOWER_ADDRESS``,
    ``FLOWER_PORT``), so its command is the same locally (127.0.0.1) and in compose
    (0.0.0.0); its authentication from ``AGENTS_FLOWER_BASIC_AUTH`` (see
    :mod:`project.core.celery_app.flower`). The gateway's likewise come from
    ``AGENTS_GATEWAY_HOST``/``AGENTS_GATEWAY_PORT``, its callers from
    ``AGENTS_GATEWAY_TOKENS``.
    """
    services = [
        Service(
            "coordinator",
            _celery_worker(COORDINATOR_QUEUE, "coordinator@%h", concurrency),
            tier="coordinator",
        )
    ]
    if beat:
        services.append(
            Service("beat", ("celery", "-A", "project", "beat", "-l", "INFO"), tier="beat")
        )
    services += [
        Service(
            f"distributor{n}",
            _celery_worker(DISTRIBUTOR_QUEUE, f"distributor{n}@%h", concurrency),
            tier="distributor",
        )
        for n in range(1, distributors + 1)
    ]
    services += [worker_service(w, concurrency=concurrency) for w in workers]
    if flower:
        services.append(
            Service(
                "flower",
                ("celery", "-A", "project", "flower"),
                env={"FLOWER_ADDRESS": "127.0.0.1", "FLOWER_PORT": str(flower_port)},
                tier="flower",
            )
        )
    if gateway:
        services.append(
            Service(
                "gateway",
                ("python", "-m", "project", "gateway"),
                env={"AGENTS_GATEWAY_HOST": "127.0.0.1", "AGENTS_GATEWAY_PORT": str(gateway_port)},
                tier="gateway",
            )
        )
    return services
