"""Corpus readers and sampling (analysis/corpora.py, analysis/sampling.py).

Every format is written here in a temporary folder, including clipvip WebDataset shards built with
``webdataset.TarWriter``. Run: ``.venv/bin/python -m pytest tests/analysis/test_corpora.py -q``.
"""

from __future__ import annotations

import gzip
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import webdataset as wds

from analysis.corpora import CorpusError, CorpusSpec, corpus_from_texts, read_all, read_corpus
from analysis.sampling import draw_sample

TEXTS = ["a man is cooking", "", "a dog runs on grass", "a man is cooking", "   ", "two kids play football"]


def _expect(corpus, records=6, empty=2, dups=1):
    assert corpus.texts == ("a man is cooking", "a dog runs on grass", "a man is cooking", "two kids play football")
    assert (corpus.n_records, corpus.n_empty, corpus.n_duplicates, corpus.n_unique) == (records, empty, dups, 3)


def test_spec_parse():
    assert CorpusSpec.parse("subs=data/a.jsonl:caption") == CorpusSpec(name="subs", path="data/a.jsonl", field="caption")
    assert CorpusSpec.parse("subs=data/a.jsonl").field is None
    assert CorpusSpec.parse("s=s3://bucket/a.jsonl") == CorpusSpec(name="s", path="s3://bucket/a.jsonl")
    assert CorpusSpec.parse("s=s3://bucket/a.jsonl:text").field == "text"
    for bad in ("no_equals.jsonl", "=x.jsonl", "name="):
        with pytest.raises(CorpusError, match="name=path"):
            CorpusSpec.parse(bad)


def test_txt_counts_empty_and_duplicates(tmp_path):
    p = tmp_path / "c.txt"
    p.write_text("\n".join(TEXTS) + "\n")
    _expect(read_corpus(f"c={p}"))


def test_jsonl_and_gzip(tmp_path):
    p = tmp_path / "c.jsonl"
    p.write_text("".join(json.dumps({"caption": t, "id": i}) + "\n" for i, t in enumerate(TEXTS)))
    _expect(read_corpus(f"c={p}:caption"))
    gz = tmp_path / "c.jsonl.gz"
    gz.write_bytes(gzip.compress(p.read_bytes()))
    _expect(read_corpus(f"c={gz}:caption"))


def test_csv_tsv_parquet(tmp_path):
    csv_path = tmp_path / "c.csv"
    csv_path.write_text("id,sentence\n" + "".join(f'{i},"{t}"\n' for i, t in enumerate(TEXTS)))
    _expect(read_corpus(f"c={csv_path}:sentence"))
    tsv_path = tmp_path / "c.tsv"
    tsv_path.write_text("text\tid\n" + "".join(f"{t}\t{i}\n" for i, t in enumerate(TEXTS)))
    _expect(read_corpus(f"c={tsv_path}"))
    pq_path = tmp_path / "c.parquet"
    pq.write_table(pa.table({"id": list(range(6)), "caption": TEXTS}), pq_path)
    _expect(read_corpus(f"c={pq_path}:caption"))


def _write_shard(path, start, texts):
    with wds.TarWriter(str(path)) as sink:
        for i, t in enumerate(texts):
            key = f"{start + i:06d}"
            sink.write({"__key__": key, "mp4": b"\x00" * 64, "subtitle.txt": f"um so {t} you know",
                        "caption.txt": t, "json": {"key": key, "caption_ofa": t.upper()}})


def test_webdataset_shards_fields_and_patterns(tmp_path):
    _write_shard(tmp_path / "00000.tar", 0, TEXTS[:3])
    _write_shard(tmp_path / "00001.tar", 3, TEXTS[3:])
    caps = read_corpus(f"caps={tmp_path}/{{00000..00001}}.tar:caption")
    _expect(caps)
    assert len(caps.files) == 2
    subs = read_corpus(f"subs={tmp_path}/*.tar")  # default field: subtitle
    assert subs.texts[0] == "um so a man is cooking you know" and subs.n_empty == 0
    js = read_corpus(f"js={tmp_path}/00000.tar:json.caption_ofa")
    assert js.texts == ("A MAN IS COOKING", "A DOG RUNS ON GRASS")
    with pytest.raises(CorpusError, match=r"corpus 'x'.*sample '000000'.*no 'ocr' member"):
        read_corpus(f"x={tmp_path}/00000.tar:ocr")
    with pytest.raises(CorpusError, match=r"corpus 'x'.*no key 'nope'"):
        read_corpus(f"x={tmp_path}/00000.tar:json.nope")


def test_missing_field_names_corpus_and_columns(tmp_path):
    j = tmp_path / "c.jsonl"
    j.write_text('{"text": "hello"}\n{"caption": "no text here"}\n')
    with pytest.raises(CorpusError, match=r"corpus 'cj'.*line 2.*no field 'text'.*\['caption'\]"):
        read_corpus(f"cj={j}")
    c = tmp_path / "c.csv"
    c.write_text("id,sentence\n1,hi\n")
    with pytest.raises(CorpusError, match=r"corpus 'cc'.*no column 'text'.*sentence"):
        read_corpus(f"cc={c}")
    p = tmp_path / "c.parquet"
    pq.write_table(pa.table({"sentence": ["hi"]}), p)
    with pytest.raises(CorpusError, match=r"corpus 'cp'.*no column 'caption'"):
        read_corpus(f"cp={p}:caption")


def test_unreadable_inputs_name_the_corpus(tmp_path):
    with pytest.raises(CorpusError, match=r"corpus 'gone': cannot read .*missing.jsonl.*No such file"):
        read_corpus(f"gone={tmp_path}/missing.jsonl")
    with pytest.raises(CorpusError, match=r"corpus 'none'.*no file matches"):
        read_corpus(f"none={tmp_path}/shards-*.tar")
    bad_json = tmp_path / "bad.jsonl"
    bad_json.write_text('{"text": "ok"}\n{"text": broken\n')
    with pytest.raises(CorpusError, match=r"corpus 'bj'.*line 2: not valid JSON"):
        read_corpus(f"bj={bad_json}")
    fake_pq = tmp_path / "fake.parquet"
    fake_pq.write_text("not parquet at all")
    with pytest.raises(CorpusError, match=r"corpus 'fp': cannot read"):
        read_corpus(f"fp={fake_pq}")
    fake_tar = tmp_path / "fake.tar"
    fake_tar.write_bytes(b"\x00garbage" * 10)
    with pytest.raises(CorpusError, match=r"corpus 'ft'"):
        read_corpus(f"ft={fake_tar}")
    with pytest.raises(CorpusError, match=r"corpus 'd': cannot tell the format.*\.docx"):
        read_corpus(f"d={tmp_path}/x.docx")


def test_empty_corpus_and_duplicate_names(tmp_path):
    p = tmp_path / "blank.txt"
    p.write_text("\n  \n\n")
    with pytest.raises(CorpusError, match=r"corpus 'blank'.*no non-empty text.*3 empty"):
        read_corpus(f"blank={p}")
    q = tmp_path / "q.txt"
    q.write_text("x\n")
    with pytest.raises(CorpusError, match=r"\['a'\] used more than once"):
        read_all([CorpusSpec.parse(f"a={q}"), CorpusSpec.parse(f"a={q}")])


def test_sampling_seeded_and_too_small():
    corpus = corpus_from_texts("caps", [f"caption number {i}" for i in range(50)] + ["caption number 0"])
    a, b = draw_sample(corpus, 20, seed=3), draw_sample(corpus, 20, seed=3)
    assert a.texts == b.texts and len(set(a.indices)) == 20
    assert draw_sample(corpus, 20, seed=4).texts != a.texts
    # The sample of a corpus depends on (seed, name) only, not on which other corpora are present.
    other = corpus_from_texts("caps", list(corpus.texts))
    assert draw_sample(other, 20, seed=3).texts == a.texts
    assert len(set(draw_sample(corpus, 50, seed=0, unique=True).texts)) == 50
    with pytest.raises(CorpusError, match=r"corpus 'caps'.*only 51 non-empty texts.*n=100.*--n 51"):
        draw_sample(corpus, 100, seed=0)
    with pytest.raises(CorpusError, match=r"only 50 unique"):
        draw_sample(corpus, 51, seed=0, unique=True)
    assert np.all(np.diff(a.indices) > 0)


def test_binary_file_as_a_corpus_is_named_not_text(tmp_path):
    gz = tmp_path / "captions.txt"  # gzip data without the .gz extension
    gz.write_bytes(gzip.compress(("\n".join(TEXTS) + "\n").encode()))
    with pytest.raises(CorpusError, match=r"corpus 'bin': .*captions\.txt is not UTF-8 text: line 1 has byte "
                                          r"0x8b at column 2; it looks like gzip data: add \.gz to the name"):
        read_corpus(f"bin={gz}")
    # Text that turns binary further down: the message names the line, however far into the file.
    j = tmp_path / "c.jsonl"
    good = "".join(json.dumps({"text": f"caption {i}"}) + "\n" for i in range(5000))
    j.write_bytes(good.encode() + b'{"text": "caf\xe9"}\n')
    with pytest.raises(CorpusError, match=r"corpus 'lat': .*c\.jsonl is not UTF-8 text: line 5001 has byte 0xe9 "
                                          r"at column 14; is it a binary file\?"):
        read_corpus(f"lat={j}")
    csv_path = tmp_path / "c.csv"
    csv_path.write_bytes(b"text\nok\n\x00\xff\xfe\n")
    with pytest.raises(CorpusError, match=r"corpus 'cb': .*line 3 has byte 0xff"):
        read_corpus(f"cb={csv_path}")


def test_byte_order_mark_and_quoted_newlines_read_as_text(tmp_path):
    p = tmp_path / "bom.txt"
    p.write_bytes(b"\xef\xbb\xbf" + ("\n".join(TEXTS) + "\n").encode())
    _expect(read_corpus(f"c={p}"))
    c = tmp_path / "multi.csv"
    c.write_text('text,id\n"a caption\nover two lines",1\nshort,2\n')
    assert read_corpus(f"m={c}").texts == ("a caption\nover two lines", "short")
