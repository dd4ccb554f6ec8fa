"""Benchmark harness: task metrics, runners, latency, reports and gates."""
