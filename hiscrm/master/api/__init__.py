"""The master's HTTP API (FastAPI, served by an embedded uvicorn on the master's loop)."""
