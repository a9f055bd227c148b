"""attnserve: the HTTP service (`service.api`) over the engine (`service.engine`)."""

__version__ = "0.1.0"
