"""The gateway's Lua scripts, one ``<name>.lua`` file each (``KEYS`` and ``ARGV`` named
as locals at the top)."""

from __future__ import annotations

from functools import cache
from importlib import resources

__all__ = ["load_script"]


@cache
def load_script(name: str) -> str:
    """The source of the script ``<name>.lua``, read once per process.

    Raises:
        FileNotFoundError: there is no such script (a build without the package's
            ``*.lua`` data files).
    """
    return resources.files(__name__).joinpath(f"{name}.lua").read_text(encoding="utf-8")
