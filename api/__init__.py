"""The producer HTTP API (FastAPI). Arrives with campaigns; the Python API in farm.submit works now."""
