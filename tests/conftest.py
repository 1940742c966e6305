"""Shared pytest setup: the real-server fixtures (mosquitto, postgres, redis, influxdb) from iot_testing."""

pytest_plugins = ["iot_testing.pytest_plugin"]
