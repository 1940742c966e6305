"""The rollouts package assembled for the API: release keys and store, the services the routes
call, and the engine thread. Built in the API's lifespan, closed on shutdown."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry
from sqlalchemy.engine import Engine

from ..core.config import CloudSettings
from ..services.config import ConfigService
from ..tsdb import TimeSeriesStore
from .engine import RolloutEngine
from .metrics import RolloutMetrics
from .releases import ArtifactStore, ReleaseService, load_release_keys
from .service import RolloutService
from .settings import RolloutSettings

__all__ = ["Rollouts"]


@dataclass
class Rollouts:
    settings: RolloutSettings
    releases: ReleaseService
    service: RolloutService
    engine: RolloutEngine
    metrics: RolloutMetrics

    @classmethod
    def open(
        cls,
        *,
        cloud: CloudSettings,
        settings: RolloutSettings,
        db: Engine,
        configs: ConfigService,
        registry: CollectorRegistry,
        tsdb: TimeSeriesStore | None = None,
    ) -> Rollouts:
        signing_key, public_key = load_release_keys(settings, cloud.state_dir)
        public_url = settings.public_api_url or f"http://{cloud.api_host}:{cloud.api_port}"
        releases = ReleaseService(
            store=ArtifactStore(settings.artifact_dir or cloud.state_dir / "artifacts"),
            signing_key=signing_key,
            public_key=public_key,
            public_api_url=public_url,
            max_artifact_bytes=settings.max_artifact_bytes,
            download_max_age_s=settings.download_max_age_s,
        )
        metrics = RolloutMetrics(registry, db)
        engine = RolloutEngine(
            db=db, cloud=cloud, settings=settings, configs=configs, releases=releases, tsdb=tsdb, metrics=metrics
        )
        service = RolloutService(settings, releases, cloud)
        return cls(settings=settings, releases=releases, service=service, engine=engine, metrics=metrics)

    def start(self) -> None:
        if self.settings.engine:
            self.engine.start()

    def close(self) -> None:
        self.engine.stop()
