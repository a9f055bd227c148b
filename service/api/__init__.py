"""The HTTP layer: FastAPI routes, schemas, SSE, errors, metrics, settings (see app.py)."""
