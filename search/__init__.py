"""Put a trained CLIP-ViP to work: encode texts and videos, embed a collection, index it, search it,
find near-duplicates and serve it over HTTP with a web page.

Imports downward only: ``model`` (the network), ``train.video`` (the evaluation's frame sampling and
preprocessing), ``shards`` (the curated shard format) and ``pipeline`` (the curation's storage
helpers and Ray set-up). Nothing outside ``jobs/`` imports this package.

    from search import Encoder
    enc = Encoder.load("runs/finetune_msrvtt_b32")
    videos = enc.encode_videos(["a.mp4", ("b.mp4", 12.0, 19.5)])   # [2, E], unit norm
    texts = enc.encode_texts(["a dog catches a frisbee"])           # [1, E], unit norm
    scores = texts @ videos.T
"""

from search.encoder import Encoder
from search.model_files import EncoderError

__all__ = ["Encoder", "EncoderError"]
