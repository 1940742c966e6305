"""Cloud side: device registry, users and permissions, REST API, config rollout, storage seams, analytics."""
