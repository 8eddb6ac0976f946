"""The A2A 1.0 gateway: any A2A client can find our skills, send tasks, follow them,
answer their questions and cancel them (``agents gateway``).

Built on the official SDK (``a2a-sdk``): its request handler and Starlette routes, over
Redis implementations of its cluster interfaces (:class:`RedisTaskStore`,
:class:`JobLogStream`), so the gateway keeps no state of its own and any number of
replicas serve any task. It talks to the tiers only through the public ``project`` API
(:mod:`project.gateway.jobs`). Needs the ``gateway`` extra; ``import project`` never
loads it. See docs/gateway.md.
"""

from project.gateway.app import Gateway, create_app, serve
from project.gateway.events import JobLogStream
from project.gateway.store import RedisTaskStore

__all__ = ["Gateway", "JobLogStream", "RedisTaskStore", "create_app", "serve"]
