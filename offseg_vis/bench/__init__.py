"""Benchmarks (run as commands, never as timed tests): speed, size, cost and the experiment grid."""
