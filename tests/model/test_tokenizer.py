"""The offline CLIP-format BPE: loads with transformers and keeps CLIP's pooling rule."""

from __future__ import annotations

from model.tokenizer import load_tokenizer, tokenize, train_clip_bpe


def test_trained_tokenizer_round_trips_and_eot_is_highest(tmp_path):
    texts = ["a red circle moving left", "a blue square moving up", "the red square goes down"] * 5
    out = train_clip_bpe(texts, tmp_path / "tok", num_merges=50)
    tok = load_tokenizer(str(out))
    assert tok.eos_token_id == len(tok) - 1  # argmax pooling finds the first end-of-text
    enc = tokenize(tok, ["A Red circle, moving LEFT", ""], max_length=16)
    ids = enc["input_ids"]
    assert ids.shape == (2, 16)
    assert ids[0, 0] == tok.bos_token_id and (ids[1, 1:] == tok.eos_token_id).all()
    assert tok.decode(ids[0], skip_special_tokens=True).replace(" ,", ",") == "a red circle, moving left"
    # Frequent words become single tokens.
    assert "circle</w>" in tok.convert_ids_to_tokens(ids[0].tolist())


def test_missing_tokenizer_is_clear(tmp_path):
    import pytest

    with pytest.raises(FileNotFoundError, match="vocab.json"):
        load_tokenizer(str(tmp_path / "none"))
    # An existing folder without vocabulary files, and a hub id that is not available offline:
    # transformers builds a tokenizer of special tokens only, which must not pass for a CLIP one.
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"no vocabulary found, \d tokens"):
        load_tokenizer(str(tmp_path / "empty"))
    with pytest.raises(FileNotFoundError, match="no CLIP tokenizer at 'nobody/no-such-tokenizer'"):
        load_tokenizer("nobody/no-such-tokenizer")
