"""The synthetic world of ``clipvip demo`` and of the test suite, kept out of the product packages.

- ``synth``: H.264 clips of moving coloured shapes with ASR-like or narrated subtitles, awkward and
  broken files for the error paths;
- ``tiny_ofa`` and ``tiny_hf``: random-weight captioners of the real architectures at toy size, with
  offline tokenizers, so that tests and benchmarks caption without a download;
- ``direction``: the motion-direction probe (a clip against its own time reversal);
- ``config``, ``stages``, ``captioner``, ``report``: what ``clipvip demo`` (``jobs/demo.py``) runs.

pipeline/, caption/, model/, train/, analysis/, shards/ and common/ never import this package.
"""
