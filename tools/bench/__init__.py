"""``make bench``: ours against a bare Celery chain with the same hops."""
