"""OFA tokenisation: GPT-2 byte-level BPE, then fairseq's dictionary remap, plus OFA's extra symbols.

Two file layouts are accepted, with the same resulting ids:

- **fairseq** (OFA's ``utils/BPE``): ``encoder.json`` and ``vocab.bpe`` (GPT-2's vocabulary and merges)
  and ``dict.txt`` (fairseq's list of GPT-2 ids, one per line with a count). Token ids the model sees
  are fairseq indices: ``<s>``=0, ``<pad>``=1, ``</s>``=2, ``<unk>``=3, then ``dict.txt`` in order, then
  ``<mask>``, ``<code_0..num_codes-1>``, ``<bin_0..num_bins-1>`` (``tasks/ofa_task.py``).
- **BART** (the transformers-style OFA tokenizer folders): ``vocab.json`` maps each byte-level token
  straight to its fairseq index (the ``dict.txt`` remap is already applied, specials and ``<mask>``
  included) and ``merges.txt`` holds the same merges as ``vocab.bpe``. The code and bin symbols follow
  in the same order; an ``added_tokens.json`` beside them must agree.
"""

from __future__ import annotations

import json
import string
from pathlib import Path

from common.bpe import bytes_to_unicode  # one table for CLIP and OFA (GPT-2's)
from common.errors import MissingInputError, UserError

BPE_FILES = ("encoder.json", "vocab.bpe", "dict.txt")
SPECIALS = ("<s>", "<pad>", "</s>", "<unk>")
CAPTION_PROMPT = " what does the image describe?"
_PUNCT = str.maketrans("", "", string.punctuation)


def strip_punctuation(text: str) -> str:
    """OFA's caption post-processing: delete every ``string.punctuation`` character, then strip."""
    return text.translate(_PUNCT).strip()


BART_FILES = ("vocab.json", "merges.txt")
ADDED_TOKENS = "added_tokens.json"


def find_bpe_files(directory: str | Path) -> dict[str, Path]:
    """The tokenizer files in ``directory``: the fairseq set, else the BART set (with ``added_tokens.json``
    when present); raise naming what is missing."""
    directory = Path(directory)
    for names in (BPE_FILES, BART_FILES):
        paths = {name: directory / name for name in names}
        if all(p.is_file() for p in paths.values()):
            if names == BART_FILES and (directory / ADDED_TOKENS).is_file():
                paths[ADDED_TOKENS] = directory / ADDED_TOKENS  # optional; checked against our ids
            return paths
    missing = [str(directory / n) for n in BPE_FILES if not (directory / n).is_file()]
    raise MissingInputError(
        f"OFA tokenizer files missing: {', '.join(missing)}. They are OFA's utils/BPE files "
        "(encoder.json, vocab.bpe, dict.txt), or vocab.json + merges.txt from a transformers-style OFA "
        "tokenizer; put them in the model directory or pass bpe_dir=<folder>"
    )


class GPT2BPE:
    """Byte-level BPE over GPT-2's files; the merge loop runs in ``tokenizers`` (same algorithm as GPT-2)."""

    def __init__(self, encoder_json: str | Path, vocab_bpe: str | Path, unk_token: str | None = None) -> None:
        from tokenizers import Tokenizer, models, pre_tokenizers

        self.encoder: dict[str, int] = json.loads(Path(encoder_json).read_text(encoding="utf-8"))
        self.decoder = {i: s for s, i in self.encoder.items()}
        lines = Path(vocab_bpe).read_text(encoding="utf-8").splitlines()
        merges = [tuple(line.split()) for line in lines if line and not line.startswith("#version")]
        bad = [m for m in merges if len(m) != 2]
        if bad:
            raise UserError(f"{vocab_bpe}: merge lines must hold two symbols, got {bad[0]!r}")
        self._tok = Tokenizer(models.BPE(vocab=self.encoder, merges=merges, unk_token=unk_token))
        self._tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        self._byte_decoder = {c: b for b, c in bytes_to_unicode().items()}

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def decode_pieces(self, pieces: list[int | str]) -> str:
        """GPT-2 ids become their byte strings; non-id symbols (``<unk>``, ``<code_5>``) stay literal."""
        text = "".join(self.decoder.get(p, str(p)) if isinstance(p, int) else p for p in pieces)
        data = bytes(self._byte_decoder.get(c, ord("?")) for c in text)
        return data.decode("utf-8", errors="replace")


class FairseqDictionary:
    """fairseq's ``Dictionary`` as OFA builds it: specials, ``dict.txt`` lines, then the extra symbols."""

    def __init__(self, dict_txt: str | Path, num_codes: int = 8192, num_bins: int = 1000) -> None:
        self.symbols: list[str] = []
        self.index: dict[str, int] = {}
        for s in SPECIALS:
            self.add(s)
        for lineno, raw in enumerate(Path(dict_txt).read_text(encoding="utf-8").splitlines(), 1):
            line = raw.rstrip()
            if not line:
                continue
            word, _, field = line.rpartition(" ")
            overwrite = field == "#fairseq:overwrite"
            if overwrite:
                word, _, field = word.rpartition(" ")
            if not word or not field.lstrip("-").isdigit():
                raise UserError(f"{dict_txt}:{lineno}: expected '<token> <count>', got {raw!r}")
            if word in self.index and not overwrite:
                raise UserError(f"{dict_txt}:{lineno}: duplicate token {word!r}; fairseq refuses this dictionary too")
            self.add(word)
        self._add_extras(num_codes, num_bins)

    @classmethod
    def from_vocab(cls, vocab_json: str | Path, num_codes: int = 8192, num_bins: int = 1000) -> FairseqDictionary:
        """The same dictionary from a BART-style ``vocab.json`` (symbol -> index, remap already applied)."""
        vocab: dict[str, int] = json.loads(Path(vocab_json).read_text(encoding="utf-8"))
        by_id = sorted((i, sym) for sym, i in vocab.items())
        if [i for i, _ in by_id] != list(range(len(by_id))):
            raise UserError(f"{vocab_json}: token ids must be 0..{len(by_id) - 1} without gaps or repeats")
        if tuple(sym for _, sym in by_id[: len(SPECIALS)]) != SPECIALS:
            raise UserError(f"{vocab_json}: ids 0-3 must be {', '.join(SPECIALS)} (fairseq's specials), got "
                             f"{[sym for _, sym in by_id[:4]]}")
        self = cls.__new__(cls)
        self.symbols, self.index = [], {}
        for _, sym in by_id:
            self.add(sym)
        self._add_extras(num_codes, num_bins)
        return self

    def _add_extras(self, num_codes: int, num_bins: int) -> None:
        """OFA's symbols after the text vocabulary: ``<mask>`` (kept where already present), codes, bins."""
        for extra in ["<mask>"] + [f"<code_{i}>" for i in range(num_codes)] + [f"<bin_{i}>" for i in range(num_bins)]:
            self.add(extra)

    def add(self, symbol: str) -> int:
        if symbol not in self.index:
            self.index[symbol] = len(self.symbols)
            self.symbols.append(symbol)
        return self.index[symbol]

    def __len__(self) -> int:
        return len(self.symbols)


class OFATokenizer:
    """Text <-> OFA token ids, exactly as OFA's ``encode_text`` and caption ``decode_fn`` do."""

    def __init__(self, bpe_dir: str | Path, num_codes: int = 8192, num_bins: int = 1000) -> None:
        files = find_bpe_files(bpe_dir)
        self.bpe_dir = Path(bpe_dir)
        self.layout = "bart" if "vocab.json" in files else "fairseq"
        if self.layout == "fairseq":
            self.bpe = GPT2BPE(files["encoder.json"], files["vocab.bpe"])
            self.dictionary = FairseqDictionary(files["dict.txt"], num_codes, num_bins)
        else:
            # BPE ids are the final ids; a token missing from vocab.json becomes <unk>, as fairseq's remap does
            self.bpe = GPT2BPE(files["vocab.json"], files["merges.txt"], unk_token="<unk>")
            self.dictionary = FairseqDictionary.from_vocab(files["vocab.json"], num_codes, num_bins)
            if ADDED_TOKENS in files:
                _check_added_tokens(files[ADDED_TOKENS], self.dictionary)
        self.bos, self.pad, self.eos, self.unk = (self.dictionary.index[s] for s in SPECIALS)

    def __len__(self) -> int:
        return len(self.dictionary)

    def encode(self, text: str) -> list[int]:
        """BPE ids -> dictionary indices (``<unk>`` when a GPT-2 id is absent from ``dict.txt``)."""
        if self.layout == "bart":
            return self.bpe.encode(text)
        return [self.dictionary.index.get(str(i), self.unk) for i in self.bpe.encode(text)]

    def encode_prompt(self, text: str = CAPTION_PROMPT) -> list[int]:
        """``[bos] + encode(text) + [eos]``, the caption task's source sequence."""
        return [self.bos, *self.encode(text), self.eos]

    def decode(self, tokens: list[int]) -> str:
        """Drop bos/eos/pad, map indices back to GPT-2 ids, and decode the bytes."""
        pieces: list[int | str] = []
        for t in tokens:
            if t in (self.bos, self.eos, self.pad):
                continue
            symbol = self.dictionary.symbols[t]
            if self.layout == "bart":
                pieces.append(t if t in self.bpe.decoder else symbol)
            else:
                pieces.append(int(symbol) if symbol.isdigit() else symbol)
        return self.bpe.decode_pieces(pieces)


def _check_added_tokens(path: Path, dictionary: FairseqDictionary) -> None:
    """An ``added_tokens.json`` (symbol -> id) must give the ids this dictionary gives."""
    added: dict[str, int] = json.loads(path.read_text(encoding="utf-8"))
    wrong = [(sym, i, dictionary.index.get(sym)) for sym, i in added.items() if dictionary.index.get(sym) != i]
    if wrong:
        sym, theirs, ours = wrong[0]
        raise UserError(f"{path}: {sym!r} has id {theirs} there but {ours} in OFA's order (<mask>, codes, bins "
                         f"after vocab.json); {len(wrong)} symbol(s) disagree. Check num_codes/num_bins")


def write_bart_layout(bpe_dir: str | Path, out_dir: str | Path, num_codes: int = 8192, num_bins: int = 1000) -> Path:
    """Rewrite OFA's fairseq-layout files (``encoder.json``, ``vocab.bpe``, ``dict.txt``) as the BART
    layout (``vocab.json``, ``merges.txt``, ``added_tokens.json``) giving the same ids; returns ``out_dir``.

    ``vocab.json`` holds the whole text dictionary, ids 0 to ``<mask>`` without gaps, as BART's does:
    the specials, every ``dict.txt`` entry (GPT-2 ids as their byte-level token, other symbols such
    as the ``madeupword0000..0002`` padding lines of OFA's real ``dict.txt`` as themselves) and
    ``<mask>``. ``added_tokens.json`` holds the code and bin symbols after it. GPT-2 tokens that
    ``dict.txt`` lacks are left out of ``vocab.json``, so both layouts map them to ``<unk>``.
    """
    files = find_bpe_files(bpe_dir)
    if "dict.txt" not in files:
        raise UserError(f"{bpe_dir} already holds the BART layout (vocab.json + merges.txt)")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    token_of = {i: s for s, i in json.loads(files["encoder.json"].read_text(encoding="utf-8")).items()}
    d = FairseqDictionary(files["dict.txt"], num_codes, num_bins)
    n_text = d.index["<mask>"] + 1  # codes and bins follow <mask>
    vocab, added = {}, {}
    for i, sym in enumerate(d.symbols):
        if i >= n_text:
            added[sym] = i
        elif sym.isdigit():
            if int(sym) not in token_of:
                raise UserError(f"{files['dict.txt']}: GPT-2 id {sym} is not in {files['encoder.json']}")
            vocab[token_of[int(sym)]] = i
        else:
            vocab[sym] = i
    (out / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (out / "merges.txt").write_text(files["vocab.bpe"].read_text(encoding="utf-8"), encoding="utf-8")
    (out / ADDED_TOKENS).write_text(json.dumps(added), encoding="utf-8")
    return out


def embedding_mismatch(tokenizer: OFATokenizer, rows: int) -> str | None:
    """Why a model embedding ``rows`` symbols cannot be used with ``tokenizer``; None when they fit.

    Official OFA does not refuse: when its dictionary is longer than the checkpoint's embedding it
    appends rows drawn at random (``models/ofa/ofa.py``, ``upgrade_state_dict_named``), and it drops
    the last row only when its dictionary lacks ``<mask>`` (never the case for OFA's). Random rows
    make the symbols they stand for decode from noise that changes from run to run, so the port
    refuses either way and says which case it is.
    """
    n = len(tokenizer)
    if rows == n:
        return None
    fix = ("use the tokenizer files that came with the checkpoint (OFA's utils/BPE dict.txt) and the "
           "num_codes/num_bins it was trained with")
    if rows < n:
        first, last = tokenizer.dictionary.symbols[rows], tokenizer.dictionary.symbols[-1]
        return (f"the tokenizer has {n} symbols but the model embeds only {rows}: ids {rows}..{n - 1} "
                f"({first} .. {last}) have no trained embedding. Official OFA would append {n - rows} randomly "
                f"initialised rows for them, so they would decode from noise; refused: {fix}")
    return (f"the model embeds {rows} symbols but the tokenizer has only {n}: {rows - n} trained rows would "
            f"have no symbol. Official OFA cannot load this pair either (it only drops a <mask> row its "
            f"dictionary lacks, and OFA's has one); refused: {fix}")
