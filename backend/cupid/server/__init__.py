"""`cupid serve`: the local HTTP service the Blender extension talks to (FastAPI + uvicorn)."""
from .app import create_app
from .jobs import Job, JobQueue
from .settings import ServerSettings

__all__ = ["ServerSettings", "create_app", "Job", "JobQueue"]
