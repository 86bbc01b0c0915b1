"""Where the farm keeps things: Redis records and embeddings, S3 objects, uploaded inputs."""
