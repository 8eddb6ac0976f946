"""Running the system locally: an embedded redis-server and the tier processes."""
