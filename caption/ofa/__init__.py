"""OFA-Caption in plain PyTorch: the official architecture, its checkpoints, its tokenizer and its beam search.

One concept per module:

- ``config``: ``OFAConfig`` and the named flavours (tiny ... huge), plus reading fairseq arch args.
- ``resnet``: the ResNet stem and stages 1-3 that embed the image.
- ``positions``: bucketed relative-position tables (text and image).
- ``layers``: attention with per-head scale, encoder and decoder layers with NormFormer extras.
- ``model``: ``OFAModel`` (encode images once, decode one step with caches).
- ``keymap``: the official fairseq key -> port key table.
- ``checkpoint``: restricted unpickler, fairseq ``.pt`` loading, safetensors conversion.
- ``tokenizer``: GPT-2 byte-level BPE plus the fairseq dictionary remap.
- ``preprocess``: RGB, square bicubic resize, mean/std 0.5.
- ``beam``: fairseq ``SequenceGenerator`` beam search semantics.
- ``captioner``: ``OFACaptioner`` behind the ``Captioner`` protocol.
- ``tiny``: a tiny random OFA plus tiny BPE files, for offline tests and the demo.
"""
