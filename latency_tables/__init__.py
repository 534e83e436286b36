"""Latency tables shipped with hwnas (JSON, format in README.md); found by `hwnas.latency.targets`."""
