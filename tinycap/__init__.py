"""TinyVideoCap: video captioning from CLIP frame embeddings down to a Cortex-M7."""

__version__ = "0.1.0"
