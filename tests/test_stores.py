"""Embeddings through a real Valkey, objects through a real SeaweedFS S3."""

from __future__ import annotations

import pytest
import redis
import torch

from farm import keys
from farm.errors import NotFound, ServiceUnavailable
from farm.stores.embeddings import Embeddings, EmbeddingStore
from farm.stores.objects import ObjectStore


def test_embeddings_round_trip_with_ttl(redis_client):
    store = EmbeddingStore(redis_client, ttl_s=120)
    g = torch.Generator().manual_seed(0)
    emb = Embeddings(torch.randn(1, 1280, generator=g), torch.randn(1, 1280, generator=g))
    key = store.put("job-rt", emb)
    assert key == keys.embeddings("job-rt")
    raw = redis_client.get(key)
    assert raw == emb.to_bytes()  # bytes in = bytes out
    assert 0 < redis_client.ttl(key) <= 120
    back = store.get("job-rt")
    assert torch.equal(back.image_embeds, emb.image_embeds)
    assert torch.equal(back.negative_image_embeds, emb.negative_image_embeds)
    store.delete("job-rt")
    assert store.get("job-rt") is None


def test_embeddings_keep_dtype(redis_client):
    store = EmbeddingStore(redis_client, ttl_s=60)
    emb = Embeddings(torch.ones(2, 8, dtype=torch.float16), torch.zeros(2, 8, dtype=torch.float16))
    store.put("job-f16", emb)
    assert store.get("job-f16").image_embeds.dtype == torch.float16


def test_embeddings_are_not_pickle(redis_client):
    emb = Embeddings(torch.ones(1, 4), torch.zeros(1, 4))
    data = emb.to_bytes()
    assert not data.startswith(b"\x80")  # a pickle stream would start with PROTO
    header_len = int.from_bytes(data[:8], "little")
    assert data[8 : 8 + header_len].startswith(b"{")  # safetensors: a JSON header


def test_redis_down_is_service_unavailable():
    dead = redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.5)
    with pytest.raises(ServiceUnavailable, match="redis"):
        EmbeddingStore(dead, ttl_s=10).put("x", Embeddings(torch.ones(1), torch.ones(1)))


def test_s3_put_get_presign(object_store):
    import httpx

    object_store.put("t/a.bin", b"\x00\x01payload", "application/octet-stream")
    assert object_store.get("t/a.bin") == b"\x00\x01payload"
    url = object_store.presigned_url("t/a.bin", expires_s=60)
    assert httpx.get(url).content == b"\x00\x01payload"
    # Signatures are checked: an anonymous GET is refused.
    assert httpx.get(url.split("?")[0]).status_code == 403


def test_s3_missing_is_not_found(object_store):
    with pytest.raises(NotFound, match="does not exist"):
        object_store.get("t/nope.png")


def test_s3_down_is_service_unavailable(settings):
    from farm.stores.objects import s3_client

    dead = ObjectStore(
        s3_client(settings.model_copy(update={"s3_endpoint": "http://127.0.0.1:1"})), "x"
    )
    with pytest.raises(ServiceUnavailable):
        dead.put("k", b"", "text/plain")
