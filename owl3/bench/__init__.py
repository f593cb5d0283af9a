"""Benchmarks: first-token latency, decode speed and memory vs images; video frame sampling."""
