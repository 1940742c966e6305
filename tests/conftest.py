"""Shared pytest setup: the real-server fixtures (mosquitto, postgres, redis, influxdb) from iot_testing."""

# Imported here, early: hypothesis's pytest plugin otherwise imports it at the end of a run that used
# none of it, under assertion rewriting, where CPython 3.11.7's parser can fail with "AST constructor
# recursion depth mismatch" (a CPython bug) and turn a green run red.
import hypothesis  # noqa: F401

pytest_plugins = ["iot_testing.pytest_plugin"]
