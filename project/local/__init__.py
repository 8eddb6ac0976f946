"""Running the system on one machine: an embedded redis-server and the tier processes.

Used by ``make demo``, ``make up`` and the tests; never imported by ``import project``.
"""
