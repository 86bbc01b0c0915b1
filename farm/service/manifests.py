"""Campaign manifests read from S3, cached: the one cache the service's verbs share."""

from __future__ import annotations

import json

from farm import keys
from farm.domain.jobs import JobSpec
from farm.domain.manifest import Manifest
from farm.stores.objects import ObjectStore

MAX_MANIFESTS = 1000  # headers are small: a thousand campaigns' worth
MAX_CHUNKS = 8  # a chunk is 10,000 specs: keep a few


class ManifestCache:
    """Reads campaign manifests (headers and explicit lists' chunks), each once per process.

    Submission puts what it wrote here (no read back); feeding, views and rebuilding read it.
    """

    def __init__(self, objects: ObjectStore, prefix: str):
        self.objects = objects
        self.prefix = prefix
        self.headers: dict[str, Manifest] = {}  # campaign id -> its manifest header
        self.chunks: dict[tuple[str, int], list[dict]] = {}  # (campaign id, n) -> chunk n

    def manifest(self, campaign_id: str, tenant: str) -> Manifest:
        """A campaign's manifest header (read from S3 once per process)."""
        found = self.headers.get(campaign_id)
        if found is None:
            raw = self.objects.get(keys.manifest_object(self.prefix, tenant, campaign_id))
            found = Manifest.from_header(json.loads(raw))
            if len(self.headers) > MAX_MANIFESTS:
                self.headers.clear()
            self.headers[campaign_id] = found
        return found

    def chunk(self, manifest: Manifest, n: int) -> list[dict]:
        """Chunk ``n`` of an explicit job list (read from S3 once per process, a few kept)."""
        key = (manifest.campaign_id, n)
        if key not in self.chunks:
            if len(self.chunks) > MAX_CHUNKS:
                self.chunks.clear()
            raw = self.objects.get(
                keys.manifest_chunk(manifest.prefix, manifest.tenant, manifest.campaign_id, n)
            )
            self.chunks[key] = [json.loads(line) for line in raw.decode().splitlines() if line]
        return self.chunks[key]

    def specs(self, manifest: Manifest, start: int, stop: int) -> list[JobSpec]:
        """Jobs ``start`` to ``stop - 1`` of the campaign, as specs."""
        return manifest.jobs(start, stop, lambda n: self.chunk(manifest, n))

    def remember(self, manifest: Manifest, chunks: list[list[dict]]) -> None:
        """What a submission just wrote: its readers in this process need not read it back."""
        self.headers[manifest.campaign_id] = manifest
        for n, chunk in enumerate(chunks):
            self.chunks[(manifest.campaign_id, n)] = chunk

    def forget(self, campaign_id: str) -> None:
        """Read the header from S3 again next time (a rebuild trusts S3, not this process)."""
        self.headers.pop(campaign_id, None)
