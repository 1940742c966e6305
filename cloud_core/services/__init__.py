"""Cloud services with the registry's and the config rollout's business rules; I/O passed in."""
