"""attnserve HTTP service (filled in by the service issue)."""
