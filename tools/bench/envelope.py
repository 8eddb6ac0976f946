"""Measure the cost of signing and verifying one A2A envelope.

For each payload size, signs ``--messages`` envelopes (``Signer.request`` plus
``to_wire``, what a sender does) and verifies each one (``verify`` on the wire
dict, what a receiving task does), timing every message on its own. Prints a
short table and, last, one JSON line with the same figures.

Run: ``.venv/bin/python -m tools.bench.envelope [--messages N]``. No Redis needed:
replay protection is one Redis round trip on top of these figures.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from typing import Any

from project.core.a2a.envelope import Keyring, Signer, canonical_bytes, verify

KEYS = "bench-k1:" + "s" * 48 + ",bench-k0:" + "t" * 48
MAX_BYTES = 1_048_576
WARMUP = 1_000


def small_payload() -> dict[str, Any]:
    return {"task_type": "compute", "payload": {"operation": "sum", "values": [1, 2, 3]}}


def large_payload(target_bytes: int = 10_240) -> dict[str, Any]:
    """A data_processing-like payload of about ``target_bytes`` canonical bytes."""
    records: list[dict[str, Any]] = []
    payload: dict[str, Any] = {"task_type": "data_processing", "records": records}
    while len(canonical_bytes(payload)) < target_bytes:
        i = len(records)
        records.append({"id": i, "name": f"record-{i:05d}", "score": i * 0.37, "ok": i % 2 == 0})
    return payload


def percentile(sorted_values: list[float], fraction: float) -> float:
    index = min(len(sorted_values) - 1, round(fraction * (len(sorted_values) - 1)))
    return sorted_values[index]


def summary(samples_ns: list[int]) -> dict[str, float]:
    values = sorted(ns / 1_000 for ns in samples_ns)
    return {
        "median_us": round(statistics.median(values), 2),
        "p99_us": round(percentile(values, 0.99), 2),
    }


def measure(payload: dict[str, Any], messages: int) -> dict[str, Any]:
    keyring = Keyring.parse(KEYS)
    signer = Signer(keyring, ttl_s=3600)
    clock = time.perf_counter_ns
    sign_ns: list[int] = []
    verify_ns: list[int] = []
    for n in range(WARMUP + messages):
        t0 = clock()
        signed = signer.request(sender="coordinator", recipient="distributor", payload=payload)
        wire = signed.to_wire()
        t1 = clock()
        envelope = verify(wire, keyring, max_bytes=MAX_BYTES)
        t2 = clock()
        if envelope.id != signed.id:
            raise AssertionError("verify returned another envelope")
        if n >= WARMUP:
            sign_ns.append(t1 - t0)
            verify_ns.append(t2 - t1)
    both_ns = [s + v for s, v in zip(sign_ns, verify_ns, strict=True)]
    return {
        "payload_bytes": len(canonical_bytes(payload)),
        "envelope_bytes": len(json.dumps(wire, separators=(",", ":"))),
        "messages": messages,
        "sign": summary(sign_ns),
        "verify": summary(verify_ns),
        "sign_verify": summary(both_ns),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=20_000, help="messages per payload size")
    args = parser.parse_args(argv)

    results = {
        "small": measure(small_payload(), args.messages),
        "10KB": measure(large_payload(), args.messages),
    }
    header = f"{'payload':<8}{'bytes':>8}  {'sign':>17}  {'verify':>17}  {'sign+verify':>17}"
    print(f"A2A envelope cost per message, {args.messages} messages, median / p99 in µs")
    print(header)
    print("-" * len(header))
    for name, row in results.items():
        cells = "  ".join(
            f"{row[k]['median_us']:>8.1f} /{row[k]['p99_us']:>7.1f}"
            for k in ("sign", "verify", "sign_verify")
        )
        print(f"{name:<8}{row['payload_bytes']:>8}  {cells}")
    print(
        json.dumps(
            {
                "benchmark": "envelope_sign_verify",
                "python": platform.python_version(),
                "results": results,
            },
            separators=(",", ":"),
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
