"""Celery app and thin task adapters over the farm's stage functions."""
