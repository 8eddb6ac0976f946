"""``make chaos``: faults and bad inputs against a real deployment, with figures."""
