"""``report.md`` for ``clipvip demo``: what the run shows, the claims with their intervals, tables,
pictures and the commands, from the results dict."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from common.jsonio import strict_dumps
from demo.report_claims import claims_section, signed, summary_lines


def _fmt(x: float, digits: int = 1) -> str:
    return f"{x:.{digits}f}"


def pct(fraction: float) -> str:
    """A fraction as a percentage that never rounds to 100% or 0% unless it is exactly that."""
    value = 100 * fraction
    for digits in range(0, 6):
        text = f"{value:.{digits}f}"
        if not ((float(text) == 100 and fraction < 1) or (float(text) == 0 and fraction > 0)):
            break
    return text + "%"


def retrieval_table(results: dict[str, Any]) -> str:
    from demo.config import VARIANTS

    chance = results["chance"]
    head = ("| model | what it is | t2v R@1 | R@5 | R@10 | MdR | MnR | t2v R@1 (DSL) | v2t R@1 | direction pair acc |\n"
            "|---|---|---|---|---|---|---|---|---|---|\n")
    rows = []
    for name, ev in results["evaluation"].items():
        m, d = ev["retrieval"], ev["direction"]
        rows.append(f"| {name} | {VARIANTS[name][2]} | {_fmt(m['t2v_r1'])} | {_fmt(m['t2v_r5'])} | "
                    f"{_fmt(m['t2v_r10'])} | {_fmt(m['t2v_medr'])} | {_fmt(m['t2v_meanr'])} | "
                    f"{_fmt(m['dsl_t2v_r1'])} | {_fmt(m['v2t_r1'])} | {_fmt(d['pair_accuracy'], 3)} |")
    rows.append(f"| chance | random ranking | {_fmt(chance['r1'])} | {_fmt(chance['r5'])} | "
                f"{_fmt(min(100.0, 10 * chance['r1']))} | {_fmt(chance['medr'])} | {_fmt(chance['medr'])} | "
                f"{_fmt(chance['r1'])} | {_fmt(chance['r1'])} | 0.500 |")
    return head + "\n".join(rows) + "\n"


def finetune_table(results: dict[str, Any]) -> str:
    head = ("| model | seed | stage | t2v R@1 | R@5 | MdR | t2v R@1 (DSL) | v2t R@1 | direction pair acc |\n"
            "|---|---|---|---|---|---|---|---|---|\n")
    lines = []
    for name, runs in results.get("finetuned", {}).items():
        before = {r["seed"]: r for r in results["seeds"][name]}
        for after in runs:
            for label, ev in (("post-pretrained", before[after["seed"]]), ("fine-tuned", after)):
                m = ev["retrieval"]
                lines.append(f"| {name} | {after['seed']} | {label} | {_fmt(m['t2v_r1'])} | {_fmt(m['t2v_r5'])} | "
                             f"{_fmt(m['t2v_medr'])} | {_fmt(m['dsl_t2v_r1'])} | {_fmt(m['v2t_r1'])} | "
                             f"{_fmt(ev['direction']['pair_accuracy'], 3)} |")
    return head + "\n".join(lines) + "\n"


def plot_losses(results: dict[str, Any], out_png: Path) -> Path:
    """One panel per loss term: the captioner's, each post-pretraining term (first seed's runs; a
    run with the term in its loss is drawn in the term's panel) and fine-tuning's."""
    from train.log import plot_loss_panels

    first = {p["run"] for p in results["pretrain"]["plan"] if p["seed"] == results["config"]["seed"]}
    captioner = results.get("captioner", {}).get("losses") or []
    panels = [("captioner fine-tuning: label-smoothed CE", {"captioner": (list(range(1, len(captioner) + 1)),
                                                                          captioner)})]
    terms: dict[str, dict[str, Any]] = {}
    for run, by_term in results["pretrain"].get("terms", {}).items():
        if run in first:
            for term, series in by_term.items():
                terms.setdefault(term, {})[run] = series
    names = {"vsc": "L(V-SC): video vs subtitle + caption", "fc": "L(F-C): middle frame vs caption",
             "vs": "L(V-S): video vs subtitle", "vc": "L(V-C): video vs caption"}
    for term, series in sorted(terms.items(), key=lambda kv: list(names).index(kv[0]) if kv[0] in names else 9):
        panels.append((f"post-pretraining, first seed: {names.get(term, term)}", series))
    ft = {run: r["terms"].get("vs") for run, r in results.get("finetune", {}).get("runs", {}).items()
          if r.get("terms", {}).get("vs")}
    if ft:
        panels.append(("fine-tuning: L(V-S), video vs description", ft))
    return plot_loss_panels(panels, out_png, columns=3)


def captioner_section(results: dict[str, Any]) -> list[str]:
    cap = results.get("captioner") or {}
    lines = ["## The captioner", ""]
    if not cap.get("steps"):
        lines += [f"Captions come from `{cap.get('model', '?')}` as given (no fine-tuning).", ""]
    else:
        acc = cap["heldout_accuracy"]
        lines += [
            f"`{cap['start']}` fine-tuned with OFA's caption recipe (teacher-forced cross-entropy, label smoothing "
            f"0.1, the caption prompt) for {cap['steps']} steps on {cap['pairs']} labelled middle frames in "
            f"{cap['seconds']:.0f} s; loss {cap['losses'][0]:.2f} -> {cap['losses'][-1]:.2f}.", "",
            f"Held-out labelled frames ({acc['n']}): colour right {pct(acc['color'])}, shape right "
            f"{pct(acc['shape'])}, both {pct(acc['both'])} (a caption counts as right when it names the true colour "
            "or shape and no other).",
        ]
    pre = results.get("curate", {}).get("caption_accuracy")
    if pre:
        lines += ["", f"The captions curation wrote for the {pre['n']} pretraining clips: colour right "
                      f"{pct(pre['color'])}, shape right {pct(pre['shape'])}, both {pct(pre['both'])}."]
    png = results.get("curate", {}).get("examples_png")
    if png and Path(png).is_file():
        lines += ["", f"![caption examples]({Path(png).name})"]
    return lines + [""]


def nmi_section(results: dict[str, Any], report_dir: Path) -> list[str]:
    """The NMI numbers the claims lean on, with a link to the whole NMI report."""
    nmi = results["nmi"]
    link = os.path.relpath(Path(nmi["out_dir"]) / "report.md", report_dir)
    per_seed = nmi["vs_descriptions_per_seed"]
    lines = ["## Domain gap (NMI, k=2)", "",
             f"K-means (k=2) on {nmi.get('n', '?')} sentences of each text beside {nmi.get('n', '?')} downstream-style "
             "descriptions: NMI near 0 means the two read as one language domain, near 1 that they separate "
             "completely. For scale, real YouTube ASR subtitles against MSR-VTT test queries score about 0.7 with the "
             f"same MiniLM encoder, COCO captions about 0.06. The whole analysis is in [the NMI report]({link}).", "",
             "| text | NMI vs descriptions (mean) | per sample |", "|---|---|---|"]
    for name in ("subtitles", "captions"):
        values = per_seed[name]
        lines.append(f"| {name} | {sum(values) / len(values):.2f} | {', '.join(f'{v:.2f}' for v in values)} |")
    captions = per_seed["captions"]
    if nmi.get("captions_unique") is not None and sum(captions) / len(captions) < 0.1:
        lines += ["", f"The captions' NMI near 0 holds by design, not as a finding: the captioner names a colour and a "
                      f"shape and nothing else, so the {nmi['captions_total']} captions are {nmi['captions_unique']} "
                      "distinct strings, each the opening words of a description."]
    return lines + [""]


def dsl_lines(results: dict[str, Any]) -> list[str]:
    """What DSL did to each model's t2v R@1, measured, and why v2t has no DSL column."""
    lines = ["DSL (dual softmax at inference) multiplies each text-video score by a softmax of that video's scores "
             "over all test texts: a video that every text scores high is damped, one that a single text picks out "
             "is kept. It helps where a few videos attract many queries. What it did here, DSL minus plain t2v R@1 "
             "on the same queries (points; 95% paired interval):", "",
             "| model | DSL - plain | per seed | 95% interval |", "|---|---|---|---|"]
    for name, d in results.get("dsl", {}).items():
        lines.append(f"| {name} | {signed(d['mean'], 't2v_r1')} | {', '.join(signed(x, 't2v_r1') for x in d['per_seed'])}"
                     f" | [{d['low']:+.1f}, {d['high']:+.1f}] |")
    return lines + ["", "An interval that holds 0 means the test set cannot tell DSL from plain scoring for that model. "
                        "The softmax runs over the texts, so for one video it rescales all its texts' scores in the "
                        "same order: video-to-text ranks are the same with and without DSL by construction, and only "
                        "v2t without DSL is shown."]


def write(cfg, out: Path, results: dict[str, Any]) -> Path:
    report_dir = out / "report"
    report_dir.mkdir(parents=True, exist_ok=True)
    loss_png = plot_losses(results, report_dir / "loss_curves.png")
    heatmap = Path(results["nmi"]["files"].get("heatmap", ""))
    if heatmap.is_file():
        shutil.copy(heatmap, report_dir / heatmap.name)
    (report_dir / "retrieval.md").write_text(retrieval_table(results))
    (report_dir / "commands.txt").write_text("\n".join(results["commands"]) + "\n")
    (report_dir / "results.json").write_text(strict_dumps(results, indent=2, default=repr) + "\n")

    smoke = bool(results["config"].get("smoke_test"))
    cur, t = results["curate"]["summary"], results["timings_s"]
    lines = ["# clipvip demo report", ""]
    if smoke:
        lines += ["> **Smoke test (`--small`).** Every stage ran on a few dozen clips for a few steps to show that it "
                  "works; the numbers below are not results and answer none of the claims. Run `clipvip demo` "
                  "without `--small` for those.", ""]
    lines += ["The CLIP-ViP recipe end to end on synthesised clips: a captioner fine-tuned to see them, curation with "
              "Ray, middle-frame captions, the NMI domain-gap analysis, post-pretraining with subtitles, captions or "
              "both (OCL) and with three video encoders, retrieval evaluation with and without DSL, fine-tuning.", "",
              "## What this run shows", ""] + summary_lines(results) + [""]
    if results["notes"]:
        lines += ["## What the numbers mean", ""] + [f"- {n}" for n in results["notes"]] + [""]
    d = results["data"]
    subtitle_kind = ("mostly off-topic speech as ASR writes it: each of colour, shape and direction said about "
                     "half the time, a third of those misheard" if d.get("subtitles") == "asr"
                     else "a speaker describing the clip, lightly garbled")
    lines += [
        "## Data", "",
        f"- {d['pretrain_clips']} pretraining clips (moving coloured shapes; subtitles: {subtitle_kind}; mixed "
        "sizes, frame rates and keyframe intervals)",
        f"- {d['finetune_clips']} fine-tuning, {d['val_clips']} validation and {d['test_clips']} test clips with "
        "clean descriptions (a downstream-style set; the test clips are never trained on or selected on)",
        f"- {d['captioner_train_clips']} + {d['captioner_heldout_clips']} labelled clips for the captioner "
        "(fine-tuning + held-out), sharing no clip with the sets above", "",
    ]
    lines += captioner_section(results)
    mentions = results["curate"].get("subtitle_mentions")
    lines += ["## Curation", "",
              f"Shards: {cur.get('shards_complete', '?')} complete; rows by status: "
              f"{json.dumps(cur.get('counts', {}))}; caption model `{results['curate']['caption_model']}`."
              + (f" The subtitles say the clip's colour word in {pct(mentions['color'])} of clips, its shape in "
                 f"{pct(mentions['shape'])} and its direction in {pct(mentions['direction'])} (exact words)."
                 if mentions else ""), ""]
    lines += nmi_section(results, report_dir)
    if heatmap.is_file():
        lines += [f"![NMI heatmap]({heatmap.name})", ""]
    lines += claims_section(results)
    lines += ["## Retrieval on the held-out test clips, every variant at the first seed", "",
              "Texts are the clips' clean descriptions; t2v is text-to-video. *direction pair acc* is the motion probe "
              "(`demo/direction.py`): every test clip is paired with its exact time reversal and descriptions that "
              "differ only in the direction word; a model that ignores frame order scores 0.5 by construction.", "",
              retrieval_table(results)] + dsl_lines(results) + [""]
    steps = ", ".join(f"{r}: step {ft['selection'].get('step')}" for r, ft in results["finetune"]["runs"].items())
    lines += ["## Fine-tuning", "",
              "Each fine-tuned variant continues from its post-pretrained model at each seed with L(V-S) on the "
              f"fine-tuning clips' clean descriptions; its checkpoint is chosen by t2v R@1 on the validation split "
              f"({steps}), never on test.", "", finetune_table(results),
              "## Loss curves", "", "One panel per loss term; each post-pretraining run appears in the panels of the "
              "terms its loss sums.", "", f"![loss curves]({loss_png.name})", ""]
    lines += ["## Time", "", f"{t['total'] / 60:.1f} minutes in all ({t['total']:.0f} s).", "",
              "| stage | seconds |", "|---|---|"] + [f"| {k} | {v} |" for k, v in t.items()]
    lines += ["", "## Commands", "", "```"] + results["commands"] + ["```", ""]
    report = report_dir / "report.md"
    report.write_text("\n".join(lines))
    return report
