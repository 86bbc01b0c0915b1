"""Export a campaign's images as a dataset: WebDataset tar shards or Parquet files.

    from farm.client import Client
    from farm.export import export_campaign

    with Client.from_settings(settings) as client:
        stats = export_campaign(client.campaign(cid), "out/", format="parquet")

See docs/export.md for the layout and how to read the shards back.
"""

from farm.export.checks import FORMATS, STATES
from farm.export.core import export_campaign
from farm.export.fetch import HttpFetcher, MissingObject
from farm.export.manifest import MANIFEST, SKIPPED, STATS, ExportStats
from farm.export.writers import parquet_schema

__all__ = [
    "FORMATS",
    "MANIFEST",
    "SKIPPED",
    "STATES",
    "STATS",
    "ExportStats",
    "HttpFetcher",
    "MissingObject",
    "export_campaign",
    "parquet_schema",
]
