"""The claims part of the demo's ``report.md``: each comparison with its seeds, a per-seed table,
the paired bootstrap interval over test queries and one sentence on what it shows."""

from __future__ import annotations

from typing import Any

from demo.claims import METRICS

# A longer run of the caption comparison, recorded in BENCHMARKS.md ("The end-to-end demo"): the
# same data, captioner and seeds at 400 post-pretraining steps; t2v R@1 (%), mean of seeds 0 and 1.
LONGER_RUN = {
    "steps": 400,
    "r1": {"proxy_subtitles": (5.2, (6.2, 4.2)), "proxy_ocl": (4.7, (5.2, 4.2)), "proxy_captions": (7.3, (8.3, 6.2))},
    "command": "clipvip demo --set pretrain_steps=400 --set 'variants=[proxy_subtitles,proxy_ocl,proxy_captions]' "
               "--set 'claim_variants=[proxy_subtitles,proxy_ocl,proxy_captions]' --set 'finetune_variants=[]'",
}


def fmt(value: float, metric: str) -> str:
    return f"{value:.3f}" if metric == "pair_accuracy" else f"{value:.1f}"


def signed(value: float, metric: str) -> str:
    return f"{value:+.3f}" if metric == "pair_accuracy" else f"{value:+.1f}"


def interval(d: dict[str, Any]) -> str:
    return f"[{signed(d['low'], d['metric'])}, {signed(d['high'], d['metric'])}]"


def verdict_sentence(claim: dict[str, Any], smoke: bool) -> str:
    """One sentence: reached, reversed or not reached at this scale, with the deciding numbers."""
    d = claim["differences"][0]
    label = METRICS[d["metric"]][0]
    seeds = ", ".join(str(s) for s in d["seeds"])
    numbers = (f"{claim['a']} - {claim['b']} on {label}: {signed(d['mean'], d['metric'])} over seeds {seeds}, "
               f"{int(100 * d['level'])}% interval {interval(d)} over {d['n_queries']} test queries")
    if smoke:
        return f"Smoke test only ({numbers}): too few clips and steps to test the claim."
    if claim["verdict"] == "A":
        return f"**Reached at this scale**: {claim['statement']} ({numbers})."
    if claim["verdict"] == "B":
        return f"**Reversed at this scale**: the opposite holds ({numbers})."
    flip = len(set(x > 0 for x in d["per_seed"] if x != 0)) > 1
    why = "the seeds disagree in sign and " if flip else ""
    return (f"**Not reached at this scale**: {why}the interval holds 0, so these {d['n_queries']} queries cannot "
            f"tell the two apart ({numbers}).")


def per_seed_table(claim: dict[str, Any]) -> list[str]:
    """Rows per seed: A, B and A - B on every metric of the claim, then the mean and the interval."""
    diffs = claim["differences"]
    head = "| seed | " + " | ".join(f"{METRICS[d['metric']][0]}: {claim['a']} / {claim['b']} / A - B" for d in diffs)
    lines = [head + " |", "|---|" + "---|" * len(diffs)]
    for i, seed in enumerate(diffs[0]["seeds"]):
        cells = [f"{fmt(d['a'][i], d['metric'])} / {fmt(d['b'][i], d['metric'])} / {signed(d['per_seed'][i], d['metric'])}"
                 for d in diffs]
        lines.append(f"| {seed} | " + " | ".join(cells) + " |")
    means = [f"{fmt(sum(d['a']) / len(d['a']), d['metric'])} / {fmt(sum(d['b']) / len(d['b']), d['metric'])} / "
             f"**{signed(d['mean'], d['metric'])}** {interval(d)}" for d in diffs]
    lines.append("| mean, 95% interval of A - B | " + " | ".join(means) + " |")
    return lines


def longer_run_lines(results: dict[str, Any]) -> list[str]:
    """What a longer run of the caption comparison showed, with the command that reproduces it."""
    steps = results["config"]["pretrain_steps"]
    if steps == LONGER_RUN["steps"]:
        return [f"This is the {steps}-step run that BENCHMARKS.md records: compare it with the default "
                "120-step demo there.", ""]
    r1 = LONGER_RUN["r1"]
    cells = "; ".join(f"{name} {mean:.1f} ({', '.join(f'{v:.1f}' for v in seeds)})"
                      for name, (mean, seeds) in r1.items())
    return [
        f"**A longer run reverses the caption result.** At {LONGER_RUN['steps']} steps instead of {steps} (same data, "
        f"captioner and seeds; recorded in BENCHMARKS.md, \"The end-to-end demo\", on another 2-core machine: the "
        f"numbers move by a query or two from one CPU to another), t2v R@1 (mean of seeds 0 and 1, per seed in "
        f"brackets) was: {cells}. Subtitles + captions no longer beat subtitles alone, and captions alone did best: "
        "the captions' head start in colour does not last once the subtitles' colour words have been learnt. "
        f"Reproduce it with `{LONGER_RUN['command']}` (about 14 minutes on 2 cores).", ""]


def claims_section(results: dict[str, Any]) -> list[str]:
    smoke = bool(results["config"].get("smoke_test"))
    lines = ["## The paper's claims, tested", ""]
    lines += [
        "Each claim compares two models trained alike but for one thing, at every seed (a seed sets the initial "
        "weights, the shard order and the frame jitter; data and captions are the same). The tables give each "
        "seed's values and A - B, then the mean over seeds with its paired bootstrap interval: the test queries "
        "resampled with replacement, the same resample for both models and every seed (2,000 resamples, 95%). "
        "An interval that holds 0 means this test set cannot tell the models apart; it says nothing about seeds "
        "not run. Recalls are in %, the direction pair accuracy is a fraction (chance 0.5). *top-1 colour / "
        "direction right*: how often the best-ranked video for a description has that attribute right.", ""]
    for claim in results.get("claims", []):
        lines += [f"### {claim['statement'][0].upper()}{claim['statement'][1:]}", "",
                  f"A = `{claim['a']}`, B = `{claim['b']}`: {claim['why']}.", ""]
        lines += per_seed_table(claim)
        lines += ["", verdict_sentence(claim, smoke), ""]
        if claim["key"] == "subtitles_help" and not smoke:
            lines += longer_run_lines(results)
    return lines


def summary_lines(results: dict[str, Any]) -> list[str]:
    """The claims' verdicts, one line each, for the top of the report."""
    smoke = bool(results["config"].get("smoke_test"))
    words = {"A": "reached", "B": "reversed", "neither": "not reached"}
    out = []
    for claim in results.get("claims", []):
        d = claim["differences"][0]
        verdict = "smoke test only" if smoke else words[claim["verdict"]]
        out.append(f"- {claim['statement']}: **{verdict}** ({METRICS[d['metric']][0]} {signed(d['mean'], d['metric'])}, "
                   f"95% interval {interval(d)}, seeds {', '.join(str(s) for s in d['seeds'])})")
    return out
