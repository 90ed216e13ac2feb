"""`cupid serve`: the local HTTP service the Blender extension talks to (FastAPI + uvicorn)."""
from .app import ServerSettings, create_app
from .jobs import Job, JobQueue

__all__ = ["ServerSettings", "create_app", "Job", "JobQueue"]
