"""The cloud REST API (FastAPI): devices, enrollment, desired config, ops endpoints."""

from .app import create_app

__all__ = ["create_app"]
