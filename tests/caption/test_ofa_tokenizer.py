"""OFA tokenisation and preprocessing: GPT-2 BPE, fairseq dictionary remap, prompt, punctuation, images.

Run: .venv/bin/python -m pytest tests/caption/test_ofa_tokenizer.py -q
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from caption.ofa.preprocess import load_image, preprocess
from demo.tiny_ofa import CORPUS, NUM_BINS, NUM_CODES, write_bpe_files
from caption.ofa.tokenizer import FairseqDictionary, OFATokenizer, bytes_to_unicode, strip_punctuation, write_bart_layout


@pytest.fixture(scope="module")
def bpe_dir(tmp_path_factory):
    return write_bpe_files(tmp_path_factory.mktemp("bpe"), seed=3)


@pytest.fixture(scope="module")
def tok(bpe_dir) -> OFATokenizer:
    return OFATokenizer(bpe_dir, num_codes=NUM_CODES, num_bins=NUM_BINS)


def reference_gpt2_bpe(word: str, ranks: dict[tuple[str, str], int]) -> list[str]:
    """GPT-2's merge rule written out plainly: repeatedly merge the lowest-ranked adjacent pair."""
    parts = list(word)
    while len(parts) > 1:
        pairs = [(ranks.get(p, 1 << 30), i) for i, p in enumerate(zip(parts, parts[1:]))]
        rank, i = min(pairs)
        if rank == 1 << 30:
            break
        a, b = parts[i], parts[i + 1]
        merged, j = [], 0
        while j < len(parts):
            if j + 1 < len(parts) and parts[j] == a and parts[j + 1] == b:
                merged.append(a + b)
                j += 2
            else:
                merged.append(parts[j])
                j += 1
        parts = merged
    return parts


def test_bpe_matches_the_gpt2_merge_rule(bpe_dir, tok):
    from tokenizers import pre_tokenizers

    merges = [tuple(line.split()) for line in (bpe_dir / "vocab.bpe").read_text().splitlines()[1:]]
    ranks = {m: r for r, m in enumerate(merges)}
    encoder = json.loads((bpe_dir / "encoder.json").read_text())
    pre = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    for text in [*CORPUS, " what does the image describe?", "Zebras don't read 42 books, cafe\u0301!"]:
        expected = [encoder[p] for word, _ in pre.pre_tokenize_str(text) for p in reference_gpt2_bpe(word, ranks)]
        assert tok.bpe.encode(text) == expected


def test_dictionary_remap_and_prompt(tok, bpe_dir):
    gpt2_ids = tok.bpe.encode(" a red circle")
    ids = tok.encode(" a red circle")
    assert ids != gpt2_ids  # dict.txt is shuffled, so the remap is not the identity
    assert [int(tok.dictionary.symbols[i]) for i in ids] == gpt2_ids
    prompt = tok.encode_prompt()
    assert prompt[0] == tok.bos == 0 and prompt[-1] == tok.eos == 2 and (tok.pad, tok.unk) == (1, 3)
    assert tok.decode(prompt) == " what does the image describe?"
    lines = (bpe_dir / "dict.txt").read_text().splitlines()
    assert len(tok) == 4 + len(lines) + 1 + NUM_CODES + NUM_BINS
    assert tok.dictionary.symbols[4 + len(lines)] == "<mask>"
    assert tok.dictionary.symbols[-1] == f"<bin_{NUM_BINS - 1}>"
    assert tok.decode([tok.bos, tok.dictionary.index["<code_3>"], tok.eos]) == "<code_3>"


@pytest.mark.parametrize("text", [*CORPUS[:3], "unicode: caf\u00e9 \u2615 and tabs\tin text"])
def test_decode_inverts_encode(tok, text):
    assert tok.decode(tok.encode_prompt(text)) == text


def test_punctuation_is_stripped_like_ofa():
    assert strip_punctuation(" a man, riding a horse.") == "a man riding a horse"
    assert strip_punctuation("it's a (small) dog!") == "its a small dog"
    assert strip_punctuation("caf\u00e9 \u2014 ok") == "caf\u00e9 \u2014 ok"  # only ASCII punctuation


def test_missing_vocab_files_are_named(tmp_path):
    (tmp_path / "encoder.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match=r"vocab.bpe.*dict.txt.*bpe_dir"):
        OFATokenizer(tmp_path)


def test_bad_dictionary_lines_are_refused(tmp_path):
    (tmp_path / "dict.txt").write_text("10 5\n11 4\n10 3\n")
    with pytest.raises(ValueError, match="dict.txt:3: duplicate token '10'"):
        FairseqDictionary(tmp_path / "dict.txt")
    (tmp_path / "dict.txt").write_text("10five\n")
    with pytest.raises(ValueError, match="dict.txt:1: expected"):
        FairseqDictionary(tmp_path / "dict.txt")


def test_byte_table_is_a_bijection():
    table = bytes_to_unicode()
    assert len(table) == 256 and len(set(table.values())) == 256 and table[ord("a")] == "a"


def test_preprocess_is_square_bicubic_with_half_mean_std():
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, (30, 50, 3), dtype=np.uint8)
    out = preprocess([arr, Image.fromarray(arr).convert("L")], size=16)
    assert out.shape == (2, 3, 16, 16) and out.dtype == torch.float32
    ref = np.asarray(Image.fromarray(arr).resize((16, 16), Image.Resampling.BICUBIC)).astype(np.float32) / 255
    assert torch.allclose(out[0], torch.from_numpy((ref - 0.5) / 0.5).permute(2, 0, 1))
    assert torch.allclose(out[1][0], out[1][1])  # grey input becomes RGB


def test_corrupt_and_missing_images_give_clear_errors(tmp_path):
    bad = tmp_path / "frame.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 truncated jpeg")
    with pytest.raises(ValueError, match="frame.jpg cannot be decoded"):
        load_image(bad)
    with pytest.raises(ValueError, match="nothere.png does not exist"):
        load_image(tmp_path / "nothere.png")
    with pytest.raises(ValueError, match="HxWx3 uint8"):
        preprocess([np.zeros((4, 4), dtype=np.float32)], size=8)


def write_bart_files(bpe_dir, out):
    return write_bart_layout(bpe_dir, out, num_codes=NUM_CODES, num_bins=NUM_BINS)


def test_bart_layout_gives_the_same_ids(tok, bpe_dir, tmp_path):
    bart = OFATokenizer(write_bart_files(bpe_dir, tmp_path / "bart"), num_codes=NUM_CODES, num_bins=NUM_BINS)
    assert (bart.layout, tok.layout) == ("bart", "fairseq") and len(bart) == len(tok)
    assert bart.dictionary.symbols[-1] == f"<bin_{NUM_BINS - 1}>" and bart.dictionary.index["<mask>"] == tok.dictionary.index["<mask>"]
    for text in [*CORPUS, " what does the image describe?", "caf\u00e9 \u2615 zebra-crossing QQQ 1234"]:
        assert bart.encode(text) == tok.encode(text)
        assert bart.decode(bart.encode_prompt(text)) == tok.decode(tok.encode_prompt(text)) == text
    assert bart.decode([bart.bos, bart.dictionary.index["<code_3>"], bart.eos]) == "<code_3>"


def test_bart_layout_checks_added_tokens_and_specials(bpe_dir, tmp_path):
    out = write_bart_files(bpe_dir, tmp_path / "bart")
    (out / "added_tokens.json").write_text(json.dumps({"<code_0>": 7}))
    with pytest.raises(ValueError, match="'<code_0>' has id 7 there but"):
        OFATokenizer(out, num_codes=NUM_CODES, num_bins=NUM_BINS)
    (out / "added_tokens.json").unlink()
    vocab = json.loads((out / "vocab.json").read_text())
    vocab["<s>"], vocab["<pad>"] = vocab["<pad>"], vocab["<s>"]
    (out / "vocab.json").write_text(json.dumps(vocab))
    with pytest.raises(ValueError, match="ids 0-3 must be <s>, <pad>, </s>, <unk>"):
        OFATokenizer(out, num_codes=NUM_CODES, num_bins=NUM_BINS)


def test_captioner_reads_the_bart_layout(tmp_path):
    import shutil

    from caption.ofa.captioner import OFACaptioner
    from demo.tiny_ofa import write_tiny_ofa

    fairseq_dir = write_tiny_ofa(tmp_path / "fairseq", seed=0)
    bart_dir = tmp_path / "bart"
    shutil.copytree(fairseq_dir, bart_dir)
    write_bart_files(fairseq_dir, bart_dir)
    for name in ("encoder.json", "vocab.bpe", "dict.txt"):
        (bart_dir / name).unlink()
    images = [np.random.default_rng(i).integers(0, 256, (32, 40, 3), dtype=np.uint8) for i in range(3)]
    a, b = OFACaptioner(str(fairseq_dir), device="cpu"), OFACaptioner(str(bart_dir), device="cpu")
    assert b.tokenizer.layout == "bart"
    assert a.generate(images) == b.generate(images) and a.generate_tokens(images) == b.generate_tokens(images)


def test_bart_layout_of_a_dictionary_with_madeupwords_loads(bpe_dir, tok, tmp_path):
    """OFA's real dict.txt ends with three ``madeupwordNNNN 0`` lines (fairseq pads the dictionary to a
    multiple of 8); BART's vocab.json keeps them at their ids, and so must the written layout, or the
    tokenizer rejects its own output for the gap they leave."""
    import shutil

    src = tmp_path / "fairseq"
    shutil.copytree(bpe_dir, src)
    with open(src / "dict.txt", "a") as f:
        f.write("".join(f"madeupword{i:04d} 0\n" for i in range(3)))
    fairseq = OFATokenizer(src, num_codes=NUM_CODES, num_bins=NUM_BINS)
    assert len(fairseq) == len(tok) + 3
    out = write_bart_files(src, tmp_path / "bart")
    vocab = json.loads((out / "vocab.json").read_text())
    mask = fairseq.dictionary.index["<mask>"]
    assert sorted(vocab.values()) == list(range(mask + 1))
    assert [vocab[f"madeupword{i:04d}"] for i in range(3)] == [mask - 3, mask - 2, mask - 1]
    added = json.loads((out / "added_tokens.json").read_text())
    assert min(added.values()) == mask + 1 and set(added) == {*(f"<code_{i}>" for i in range(NUM_CODES)),
                                                            *(f"<bin_{i}>" for i in range(NUM_BINS))}
    bart = OFATokenizer(out, num_codes=NUM_CODES, num_bins=NUM_BINS)
    named = [sym for sym in fairseq.dictionary.symbols if not sym.isdigit()]  # specials, madeupwords, codes, bins
    assert len(bart) == len(fairseq) and [bart.dictionary.index[s] for s in named] == [fairseq.dictionary.index[s] for s in named]
    for text in [*CORPUS, " what does the image describe?", "caf\u00e9 madeupword0000 QQQ"]:
        assert bart.encode(text) == fairseq.encode(text)
        assert bart.decode(bart.encode_prompt(text)) == fairseq.decode(fairseq.encode_prompt(text)) == text
    made_up = fairseq.dictionary.index["madeupword0001"]
    assert bart.decode([made_up]) == fairseq.decode([made_up]) == "madeupword0001"
