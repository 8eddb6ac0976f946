"""The Lua scripts of :mod:`project.core.state`, one ``<name>.lua`` file each.

Each script names its ``KEYS`` and ``ARGV`` as locals at the top and says what it
returns. The stores register them with ``Redis.register_script``.
"""

from __future__ import annotations

from functools import cache
from importlib import resources

__all__ = ["load_script"]


@cache
def load_script(name: str) -> str:
    """The source of the script ``<name>.lua``, read once per process.

    Args:
        name: the file's name without ``.lua`` (e.g. ``job_assign``).

    Raises:
        FileNotFoundError: there is no such script.
    """
    return resources.files(__name__).joinpath(f"{name}.lua").read_text(encoding="utf-8")
