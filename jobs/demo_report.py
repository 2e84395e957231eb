"""``report.md`` for ``clipvip demo``: tables, pictures and the commands, from the results dict."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any


def _fmt(x: float, digits: int = 1) -> str:
    return f"{x:.{digits}f}"


def retrieval_table(results: dict[str, Any]) -> str:
    from jobs.demo import VARIANTS

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


def plot_losses(results: dict[str, Any], out_png: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for name, losses in results["pretrain"]["losses"].items():
        axes[0].plot(range(1, len(losses) + 1), losses, label=name)
    axes[0].set_title("post-pretraining loss (summed CE terms)")
    axes[0].set_xlabel("step")
    axes[0].legend()
    for name, ft in results.get("finetune", {}).items():
        axes[1].plot(range(1, len(ft["losses"]) + 1), ft["losses"], label=name)
    axes[1].set_title("fine-tuning loss (L(V-S))")
    axes[1].legend()
    axes[1].set_xlabel("step")
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out_png, dpi=110)
    plt.close(fig)
    return out_png


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    return repr(obj)


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
    (report_dir / "results.json").write_text(json.dumps(_jsonable(results), indent=2) + "\n")

    cur = results["curate"]["summary"]
    t = results["timings_s"]
    lines = [
        "# clipvip demo report", "",
        "The CLIP-ViP recipe end to end on synthesised clips: curation with Ray, middle-frame captions, the NMI",
        "domain-gap analysis, post-pretraining with OCL, retrieval evaluation with and without DSL, fine-tuning.", "",
    ]
    if results["notes"]:
        lines += ["## What the numbers mean", ""] + [f"- {n}" for n in results["notes"]] + [""]
    d = results["data"]
    lines += [
        "## Data", "",
        f"- {d['pretrain_clips']} pretraining clips (moving coloured shapes, noisy ASR-like subtitles, mixed "
        "sizes, frame rates and keyframe intervals)",
        f"- {d['finetune_clips']} fine-tuning, {d['val_clips']} validation and {d['test_clips']} test clips with "
        "clean descriptions (a downstream-style set; the test clips are never trained on or selected on)", "",
        "## Curation", "",
        f"Shards: {cur.get('shards_complete', '?')} complete; rows by status: "
        f"{json.dumps(cur.get('counts', cur.get('status_counts', {})))}; caption model "
        f"`{results['curate']['caption_model']}`.", "",
        "## Domain gap (NMI, k=2)", "",
        "Higher NMI means K-means separates the two corpora easily: a larger language domain gap.", "",
        results["nmi"].get("markdown", "").strip(), "",
    ]
    if heatmap is not None:
        lines += [f"![NMI heatmap]({heatmap.name})", ""]
    lines += [
        "## Retrieval on the held-out test clips", "",
        "Texts are the clips' clean descriptions; t2v is text-to-video. *direction pair acc* is the motion probe",
        "(`model/direction.py`): every test clip is paired with its exact time reversal and descriptions that differ",
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
