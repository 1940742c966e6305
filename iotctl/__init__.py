"""The ``iotctl`` command line: one entry point for devices, fleet managers, students and analysts."""
