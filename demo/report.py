"""``report.md`` for ``clipvip demo``: tables, pictures and the commands, from the results dict."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from common.jsonio import strict_dumps


def _fmt(x: float, digits: int = 1) -> str:
    return f"{x:.{digits}f}"


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
    head = ("| model | stage | t2v R@1 | R@5 | MdR | t2v R@1 (DSL) | v2t R@1 | direction pair acc |\n"
            "|---|---|---|---|---|---|---|---|\n")
    lines = []
    for name, ft in results["finetune"].items():
        for label, ev in (("post-pretrained", results["evaluation"][name]), ("fine-tuned", ft["evaluation"])):
            m = ev["retrieval"]
            lines.append(f"| {name} | {label} | {_fmt(m['t2v_r1'])} | {_fmt(m['t2v_r5'])} | {_fmt(m['t2v_medr'])} | "
                         f"{_fmt(m['dsl_t2v_r1'])} | {_fmt(m['v2t_r1'])} | {_fmt(ev['direction']['pair_accuracy'], 3)} |")
    return head + "\n".join(lines) + "\n"


def _mean_and_seeds(values: list[float], digits: int = 1) -> str:
    """``mean (v1, v2, ...)``: with a handful of seeds the values say more than a standard deviation."""
    mean = sum(values) / len(values)
    if len(values) == 1:
        return _fmt(mean, digits)
    return f"{_fmt(mean, digits)} ({', '.join(_fmt(v, digits) for v in values)})"


def _claim_values(results: dict[str, Any], name: str) -> dict[str, list[float]]:
    runs = results["seeds"][name]
    return {"r1": [r["retrieval"]["t2v_r1"] for r in runs], "r5": [r["retrieval"]["t2v_r5"] for r in runs],
            "medr": [r["retrieval"]["t2v_medr"] for r in runs],
            "pair": [r["direction"]["pair_accuracy"] for r in runs],
            **{f"top1_{k}": [100 * r["top1"][k] for r in runs] for k in ("color", "shape", "direction")}}


CLAIM_TEXTS = {"proxy_subtitles": ("subtitles",), "proxy_ocl": ("subtitles", "captions"), "proxy_captions": ("captions",)}


def claim_table(results: dict[str, Any]) -> str:
    """The paper's comparison: the same model and steps, pretrained on subtitles, both, or captions."""
    nmi = results["nmi"]["vs_descriptions_per_seed"]
    head = ("| model | text in post-pretraining | NMI of that text vs descriptions (samples) | t2v R@1 | R@5 | MdR | "
            "top-1 colour % | top-1 shape % | top-1 direction % | direction pair acc |\n"
            "|---|---|---|---|---|---|---|---|---|---|\n")
    rows = []
    for name in results["seeds"]:
        v = _claim_values(results, name)
        texts = CLAIM_TEXTS.get(name, ())
        rows.append(f"| {name} | {' + '.join(texts) or '?'} | "
                    f"{' / '.join(f'{t} {_mean_and_seeds(nmi[t], 2)}' for t in texts)} | {_mean_and_seeds(v['r1'])} | "
                    f"{_mean_and_seeds(v['r5'])} | {_mean_and_seeds(v['medr'])} | {_mean_and_seeds(v['top1_color'], 0)} | "
                    f"{_mean_and_seeds(v['top1_shape'], 0)} | {_mean_and_seeds(v['top1_direction'], 0)} | "
                    f"{_mean_and_seeds(v['pair'], 3)} |")
    chance = results["chance"]
    rows.append(f"| chance | random ranking | | {_fmt(chance['r1'])} | {_fmt(chance['r5'])} | {_fmt(chance['medr'])} | "
                f"25 | 50 | 25 | 0.500 |")
    return head + "\n".join(rows) + "\n"


def _paired(results: dict[str, Any], a: str, b: str, key: str = "r1") -> list[float]:
    """Per-seed differences a - b (the same seed gives both runs the same data order and start)."""
    va, vb = _claim_values(results, a)[key], _claim_values(results, b)[key]
    return [x - y for x, y in zip(va, vb)]


def claim_reading(results: dict[str, Any]) -> list[str]:
    """What the claim table says, in numbers: each comparison with its per-seed differences."""
    seeds = results["seeds"]
    lines = []
    for a, b, what in (("proxy_ocl", "proxy_subtitles", "adding captions to subtitles (OCL vs subtitles only)"),
                       ("proxy_ocl", "proxy_captions", "adding subtitles to captions (OCL vs captions only)")):
        if a not in seeds or b not in seeds:
            continue
        for key, label, digits in (("r1", "t2v R@1", 1), ("pair", "direction pair accuracy", 3)):
            d = _paired(results, a, b, key)
            mean = sum(d) / len(d)
            up, down = sum(x > 0 for x in d), sum(x < 0 for x in d)
            sign = f"{up} seed(s) up, {down} down, {len(d) - up - down} level"
            lines.append(f"- {what}: {label} {mean:+.{digits}f} on average (per seed: "
                         f"{', '.join(f'{x:+.{digits}f}' for x in d)}; {sign}).")
    chance = {"color": 25.0, "shape": 50.0, "direction": 25.0}
    learnt = []
    for name in seeds:
        v = _claim_values(results, name)
        got = [k for k in chance if sum(v[f"top1_{k}"]) / len(v[f"top1_{k}"]) >= chance[k] + 15]
        learnt.append(f"{name}: {', '.join('colour' if k == 'color' else k for k in got) or 'nothing'}")
    lines.append("- Attributes the top-1 video gets right clearly above chance (15+ points over it, mean over seeds): "
                 + "; ".join(learnt) + ". A description names colour, shape and direction, so a model blind to one "
                 "of them ranks the right clip first only by luck among the clips that differ in it: R@1 stays low "
                 "until all three are matched.")
    cur = results.get("curate", {})
    acc, mentions = cur.get("caption_accuracy"), cur.get("subtitle_mentions")
    if acc and mentions:
        lines.append(f"- What each text carries about a pretraining clip: its caption names the right colour "
                     f"{100 * acc['color']:.0f}% and the right shape {100 * acc['shape']:.0f}% of the time and never "
                     f"the direction; its subtitle says the colour word {100 * mentions['color']:.0f}%, the shape "
                     f"{100 * mentions['shape']:.0f}% and the direction {100 * mentions['direction']:.0f}% of the time "
                     "(exact words; misheard ones do not count), amid off-topic speech.")
    return lines


def plot_losses(results: dict[str, Any], out_png: Path) -> Path:
    """The captioner's, the first seed's post-pretraining and the fine-tuning losses, side by side."""
    from train.log import plot_loss_panels

    def series(losses: list[float]) -> tuple[list[int], list[float]]:
        return list(range(1, len(losses) + 1)), list(losses)

    first_seed = {p["run"] for p in results["pretrain"].get("plan", []) if p["seed"] == results["config"]["seed"]}
    captioner = results.get("captioner", {}).get("losses") or []
    return plot_loss_panels([
        ("captioner fine-tuning (label-smoothed CE)", {"captioner": series(captioner)}),
        ("post-pretraining loss, first seed (summed CE terms)",
         {name: series(losses) for name, losses in results["pretrain"]["losses"].items()
          if not first_seed or name in first_seed}),
        ("fine-tuning loss (L(V-S))", {name: series(ft["losses"]) for name, ft in results.get("finetune", {}).items()}),
    ], out_png)


def captioner_section(results: dict[str, Any], report_dir: Path) -> list[str]:
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
            f"Held-out labelled frames ({acc['n']}): colour right {100 * acc['color']:.0f}%, shape right "
            f"{100 * acc['shape']:.0f}%, both {100 * acc['both']:.0f}% (a caption counts as right when it names the "
            "true colour or shape and no other).",
        ]
    pre = results.get("curate", {}).get("caption_accuracy")
    if pre:
        lines += ["", f"The captions curation wrote for the {pre['n']} pretraining clips: colour right "
                      f"{100 * pre['color']:.0f}%, shape right {100 * pre['shape']:.0f}%, both {100 * pre['both']:.0f}%."]
    png = results.get("curate", {}).get("examples_png")
    if png and Path(png).is_file():
        lines += ["", f"![caption examples]({Path(png).name})"]
    return lines + [""]


def write(cfg, out: Path, results: dict[str, Any]) -> Path:
    report_dir = out / "report"
    report_dir.mkdir(parents=True, exist_ok=True)
    loss_png = plot_losses(results, report_dir / "loss_curves.png")
    nmi_files = results["nmi"]["files"]
    heatmap = next((Path(p) for k, p in nmi_files.items() if "heatmap" in k), None)
    projection = next((Path(p) for k, p in nmi_files.items() if "projection" in k), None)
    for pic in (heatmap, projection):
        if pic is not None and pic.is_file():
            shutil.copy(pic, report_dir / pic.name)
    (report_dir / "retrieval.md").write_text(retrieval_table(results))
    (report_dir / "commands.txt").write_text("\n".join(results["commands"]) + "\n")
    (report_dir / "results.json").write_text(strict_dumps(results, indent=2, default=repr) + "\n")

    cur = results["curate"]["summary"]
    t = results["timings_s"]
    lines = [
        "# clipvip demo report", "",
        "The CLIP-ViP recipe end to end on synthesised clips: a captioner fine-tuned to see them, curation with",
        "Ray, middle-frame captions, the NMI domain-gap analysis, post-pretraining with subtitles, captions or",
        "both (OCL), retrieval evaluation with and without DSL, fine-tuning.", "",
    ]
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
    lines += captioner_section(results, report_dir)
    lines += [
        "## Curation", "",
        f"Shards: {cur.get('shards_complete', '?')} complete; rows by status: "
        f"{json.dumps(cur.get('counts', cur.get('status_counts', {})))}; caption model "
        f"`{results['curate']['caption_model']}`.", "",
        "## Domain gap (NMI, k=2)", "",
        "Higher NMI means K-means separates the two corpora easily: a larger language domain gap. For scale, "
        "real YouTube ASR subtitles against MSR-VTT test queries score about 0.7 with the same MiniLM encoder, "
        "COCO captions about 0.06.", "",
        results["nmi"].get("markdown", "").strip(), "",
    ]
    if heatmap is not None:
        lines += [f"![NMI heatmap]({heatmap.name})", ""]
    n_seeds = len(next(iter(results["seeds"].values()), []))
    lines += [
        "## Does adding captions help? Subtitles, captions or both", "",
        f"The paper's claim on this toy: proxy-guided attention post-pretrained for the same "
        f"{results['config']['pretrain_steps']} steps with subtitles only L(V-S), with subtitles and captions "
        "L(V-SC) + L(F-C) (OCL), and with captions only L(V-C) + L(F-C), then evaluated zero-shot on the test clips' "
        f"descriptions. Each cell is the mean over {n_seeds} seed(s) with the per-seed values in brackets "
        "(a seed sets the initial weights, the shard order and the frame jitter; the data and captions are the "
        "same). *top-1 colour/shape/direction* is how often the best-ranked video for a description has that "
        "attribute right: it shows which part of a description a model can match. BENCHMARKS.md (the demo "
        "section) has the same comparison at 400 steps.", "",
        claim_table(results),
        *claim_reading(results), "",
        "## Retrieval on the held-out test clips", "",
        "Every variant at the first seed.", "",
        "Texts are the clips' clean descriptions; t2v is text-to-video. *direction pair acc* is the motion probe",
        "(`demo/direction.py`): every test clip is paired with its exact time reversal and descriptions that differ",
        "only in the direction word; a model that ignores frame order scores 0.5 by construction.", "",
        retrieval_table(results),
        "## Fine-tuning", "",
        "Each variant continues with L(V-S) on the fine-tuning clips' clean descriptions; its checkpoint is "
        "chosen by t2v R@1 on the validation split (steps: "
        + ", ".join(f"{n} {ft['selection'].get('step')}" for n, ft in results["finetune"].items())
        + "), never on test.", "",
        finetune_table(results),
        "## Loss curves", "", f"![loss curves]({loss_png.name})", "",
        "## Time", "", "| stage | seconds |", "|---|---|",
    ]
    lines += [f"| {k} | {v} |" for k, v in t.items()]
    lines += ["", "## Commands", "", "```"] + results["commands"] + ["```", ""]
    report = report_dir / "report.md"
    report.write_text("\n".join(lines))
    return report
