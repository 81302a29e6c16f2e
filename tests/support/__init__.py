"""Helpers shared by the tests, the benchmarks and the scripts: `from tests.support import speech`."""
