"""Tools beside the product: the benchmark and the fault-injection harness."""
