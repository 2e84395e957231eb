"""``clipvip nmi`` end to end (jobs/nmi.py): corpora in three formats, the offline MiniLM encoder,
every report file written; bad input gives exit code 2, a one-line message naming the corpus, and no
output folder.

Run: ``.venv/bin/python -m pytest tests/jobs/test_nmi_cli.py -q``.
"""

from __future__ import annotations

import json

import pytest
import webdataset as wds

from common.jsonio import config_json
from jobs.cli import main as clipvip
from jobs.nmi import build_parser, config_from_args
from jobs.common import cli_main
from jobs.nmi import main


def nmi(argv: list[str]) -> int:
    """``clipvip nmi ARGV`` as the command line runs it: user errors become one line and exit code 2."""
    return cli_main("clipvip nmi", main, argv)

SPEECH = ["um so yeah we are {} and uh you know the thing is right", "okay guys today i'm gonna show you {} alright",
          "so basically what happens here is {} you know what i mean"]
CAPTION = ["a man is {} in a room", "a person {} on a table", "someone is {} while people watch"]
VERBS = ["cooking", "dancing", "painting", "singing", "cleaning", "building", "reading", "running", "drawing",
         "swimming", "typing", "jumping", "climbing", "knitting", "fishing", "driving"]


@pytest.fixture()
def corpora(tmp_path):
    subs = [t.format(v) for t in SPEECH for v in VERBS]  # 48 texts
    caps = [t.format(v) for t in CAPTION for v in VERBS]
    (tmp_path / "subs.txt").write_text("\n".join(subs[:24] + ["", subs[0]] + subs[24:]) + "\n")
    (tmp_path / "caps.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in caps))
    with wds.TarWriter(str(tmp_path / "shard-00000.tar")) as sink:
        for i, (s, c) in enumerate(zip(subs, caps)):
            sink.write({"__key__": f"{i:06d}", "subtitle.txt": s, "caption.txt": c, "json": {"key": f"{i:06d}"}})
    return tmp_path


def test_cli_writes_every_report_file(corpora, tmp_path, capsys):
    out = tmp_path / "report"
    argv = ["--pretrain", f"subs={corpora}/subs.txt", "--pretrain", f"ofa={corpora}/shard-*.tar:caption",
            "--downstream", f"caps={corpora}/caps.jsonl", "--n", "30", "--seeds", "0", "1", "--restarts", "3",
            "--cache-dir", str(tmp_path / "cache"), "--set", "cluster.max_iter=30", "--out", str(out), "--no-progress"]
    rc = clipvip(["nmi", *argv])
    assert rc == 0
    resolved = json.loads((out / "config.json").read_text())
    assert resolved["cluster"] == {"backend": "auto", "restarts": 3, "max_iter": 30, "faiss_threads": 1}
    # The same text every run writes for its resolved config (common.jsonio.config_json).
    assert (out / "config.json").read_text() == config_json(config_from_args(build_parser().parse_args(argv)))
    for name in ("report.json", "report.md", "nmi_matrix.png", "projection.png", "config.json"):
        assert (out / name).stat().st_size > 0, name
    for png in ("nmi_matrix.png", "projection.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rep = json.loads((out / "report.json").read_text())
    assert rep["matrix"]["names"] == ["subs", "ofa", "caps"]
    assert [(p["a"], p["b"]) for p in rep["focus_pairs"]] == [("subs", "caps"), ("ofa", "caps")]
    assert len(rep["pairs"]) == 3 and rep["all_corpora"]["k"] == 3
    assert len(rep["pairs"][0]["nmi"]["values"]) == 2
    assert rep["settings"]["encoder"] == "minilm" and rep["versions"]["scikit-learn"]
    subs = next(c for c in rep["corpora"] if c["name"] == "subs")
    assert (subs["records"], subs["empty"], subs["duplicates"]) == (50, 1, 1)
    assert set(rep["timings_s"]) >= {"encode", "cluster", "score", "total"}
    # Chatty speech vs short captions: a clear gap; the shard captions are the same captions: none.
    by_pair = {(p["a"], p["b"]): p["nmi"]["mean"] for p in rep["pairs"]}
    assert by_pair[("subs", "caps")] > 0.5 > by_pair[("ofa", "caps")]
    md = (out / "report.md").read_text()
    assert md.splitlines()[2].startswith("**How to read this.**")
    assert "| subs (P) | caps (D) |" in md and "(nmi_matrix.png)" in md and "(projection.png)" in md
    # The encoder is named with the precision it ran in.
    assert rep["encoder"]["dtype"] in ("bfloat16", "float32") and f"in {rep['encoder']['dtype']}" in md
    assert rep["pairs"][0]["ci"]["level"] == 0.95
    assert "wrote" in capsys.readouterr().out
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no temporary folder left


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("clipvip nmi: error: ") and "\n" not in err and "Traceback" not in err, err
    return err


def test_cli_errors_name_the_corpus_and_leave_no_folder(corpora, tmp_path, capsys):
    out = tmp_path / "r"
    args = ["--n", "10", "--no-cache", "--out", str(out), "--no-progress"]
    assert nmi([f"a={corpora}/caps.jsonl:caption", f"b={corpora}/subs.txt", *args]) == 2
    err = _one_line_error(capsys)
    assert "corpus 'a'" in err and "no field 'caption'" in err
    assert nmi([f"a={corpora}/caps.jsonl", f"b={corpora}/subs.txt", *args, "--n", "500"]) == 2
    err = _one_line_error(capsys)
    # Every corpus that is too small, in the one line, not one per rerun.
    assert "2 corpus(es) hold fewer non-empty texts than the sample size n=500" in err
    assert "'a' (" in err and "'b' (" in err and "--n " in err
    assert nmi([f"only={corpora}/caps.jsonl", *args]) == 2
    assert "at least two corpora" in _one_line_error(capsys)
    (tmp_path / "blob.txt").write_bytes(b"\x1f\x8b\x08\x00binary")
    assert nmi([f"a={corpora}/caps.jsonl", f"bin={tmp_path}/blob.txt", *args]) == 2
    assert "blob.txt is not UTF-8 text: line 1" in _one_line_error(capsys)
    # None of the failed runs left a folder (config.json used to be written before the inputs were read).
    assert not out.exists() and [p.name for p in tmp_path.iterdir() if not p.is_file()] == []


def test_cli_out_must_be_a_report_folder(corpora, tmp_path, capsys):
    args = [f"a={corpora}/caps.jsonl", f"b={corpora}/subs.txt", "--n", "10", "--no-cache", "--no-progress"]
    taken = tmp_path / "notes.txt"
    taken.write_text("mine")
    assert nmi([*args, "--out", str(taken)]) == 2
    assert "notes.txt is a file, not a folder" in _one_line_error(capsys)
    assert taken.read_text() == "mine"
    # A failed run into the folder of an earlier report leaves that report and its config as they were.
    earlier = tmp_path / "earlier"
    earlier.mkdir()
    (earlier / "report.md").write_text("# earlier report\n")
    (earlier / "config.json").write_text('{"n": 7}\n')
    assert nmi([f"a={corpora}/caps.jsonl:nope", f"b={corpora}/subs.txt", "--n", "10", "--no-cache",
                "--no-progress", "--out", str(earlier)]) == 2
    _one_line_error(capsys)
    assert sorted(p.name for p in earlier.iterdir()) == ["config.json", "report.md"]
    assert (earlier / "config.json").read_text() == '{"n": 7}\n'


def test_a_sample_of_every_text_is_not_called_a_new_draw(corpora, tmp_path, capsys):
    """caps.jsonl and the shard captions hold 48 texts each: with n=48 every seed draws all of them."""
    out = tmp_path / "whole"
    assert clipvip(["nmi", f"a={corpora}/caps.jsonl", f"b={corpora}/shard-*.tar:caption", "--n", "48", "--seeds", "0",
                    "1", "--restarts", "2", "--no-cache", "--no-progress", "--out", f"{out}/"]) == 0
    md = (out / "report.md").read_text()
    assert "each drawing the same sentences: n is every corpus's whole size" in md
    assert "each drawing new sentences" not in md
    assert f"{out}/config.json" in capsys.readouterr().out  # one slash, though --out ended in one
