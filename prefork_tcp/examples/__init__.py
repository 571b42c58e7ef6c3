"""Example applications: ``echo``, ``ping`` (for redis-benchmark) and ``smtp``."""
