"""The benchmark's answer in words: the sentences that ``results.md`` and the README quote
(``tests/test_numbers.py`` checks the README against them) and the number formats of the report.
Each function reads a summary (bench_summary.summarize, or the ``results.json`` written from
it) and returns a sentence, or None while the cells it needs are missing."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence


def num(x, fmt: str = ".3f") -> str:
    """A number, "∞" for +inf, "n/a" for None or NaN."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    if isinstance(x, float) and math.isinf(x):
        return "∞" if x > 0 else "−∞"
    return format(x, fmt)


def pct(x) -> str:
    """A fraction as a signed percentage."""
    return num(x if x is None or math.isinf(x) else 100 * x, "+.1f") + (
        "" if x is None or math.isinf(x) else " %")


def ci(iv: Sequence[float] | None, f=pct) -> str:
    """An interval as "[lo, hi]"."""
    return "n/a" if not iv else f"[{f(iv[0])}, {f(iv[1])}]"


def mean_sd(s: Mapping | None, f=pct) -> str:
    """A seed summary (or a mean_sd dict) as "mean ± sd (n seeds)"."""
    if not s or s.get("mean") is None:
        return "n/a"
    n = len(s["seeds"]) if "seeds" in s else s.get("n", 1)
    sd = f" ± {f(s['sd']).replace('+', '')}" if s.get("sd") is not None else ""
    return f"{f(s['mean'])}{sd} ({n} seed{'s' if n != 1 else ''})"


def per_seed(s: Mapping, f=pct) -> str:
    """Per-seed estimates with their intervals."""
    return "; ".join(f"s{k}: {f(v['value'])} {ci(v['interval'], f)}"
                     for k, v in s.get("per_seed", {}).items()) or "n/a"


def fmt_ap(x) -> str:
    return num(x, ".3f")


def fmt_dap(x) -> str:
    return num(x, "+.3f")


def _unbounded(v) -> bool:  # +inf in memory, "inf" once written to results.json
    return v == "inf" or (isinstance(v, float) and math.isinf(v) and v > 0)


def multiscale_never_reaches(s: Mapping) -> str | None:
    """When the multi-scale sweep does not reach the elastic AP (compute saved ∞ for the seed
    mean on every resample), the sentence that says so with its best point and the seeds on
    which it does reach it; None otherwise."""
    saved = s["headline"]["multiscale"]["compute_saved"]
    sweep = (s.get("detectors") or {}).get("multiscale", {}).get("sweep")
    if not sweep or not _unbounded(saved["mean"]) or not saved["interval"] or not all(
            _unbounded(v) for v in saved["interval"]):
        return None
    phi, top = max(sweep.items(), key=lambda kv: kv[1]["AP"]["mean"])
    best = (f"AP {fmt_ap(top['AP']['mean'])} at φ = {float(phi):g} "
            f"({num(top['gflops']['mean'], '.2f')} GFLOPs)")
    reached = {seed: v for seed, v in saved["per_seed"].items()
               if not (_unbounded(v["value"]) and all(_unbounded(x) for x in v["interval"]))}
    tail = "and the AP gain at equal GFLOPs is the comparison that has a size."
    if not reached:
        return (f"Multi-scale never reaches the elastic AP on any seed or resample: its best "
                f"sweep point is {best}, so the compute saved against it is unbounded (∞) "
                + tail)
    where = "; ".join(f"s{seed}: {pct(float(v['value']))} "  # "inf" as read from results.json
                      f"{ci([float(x) for x in v['interval']])}" for seed, v in reached.items())
    return (f"Multi-scale reaches the elastic AP on {len(reached)} of {len(saved['seeds'])} "
            f"seeds (compute saved there {where}; ∞ in an interval: resamples on which it does "
            f"not); on the others it never does, so the seed mean of the saving is unbounded "
            f"(∞). Its best sweep point over the seeds is {best}, " + tail)


def best_fixed(s: Mapping) -> str | None:
    """The best single fixed resolution (highest mean AP of the fixed runs trained) against
    elastic, in one sentence; a run trained at fewer seeds than the others says how many.
    None until a fixed run and elastic share a seed."""
    b = s.get("best_fixed")
    if not b:
        return None
    seeds = b.get("seeds_by_run", {})
    most = max((len(v) for v in seeds.values()), default=0)

    def seed_note(run: str) -> str:
        n = len(seeds.get(run, ()))
        return f" ({n} seed{'s' if n != 1 else ''})" if 0 < n < most else ""

    text = (f"**Best single fixed resolution**: `{b['run']}` (φ = {b['phi']:g}, mean AP "
            f"{fmt_ap(b['mean_ap'])}; each fixed resolution trained: "
            + ", ".join(f"{r} {fmt_ap(v)}{seed_note(r)}" for r, v in b["mean_ap_by_run"].items())
            + f"). Elastic minus it: {_elastic_against(b)}.")
    seeded = b.get("seeded")
    if seeded:
        n = len(seeded["seeds"])
        text += (f" The best at {n} seeds, `{seeded['run']}` (φ = {seeded['phi']:g}, mean AP "
                 f"{fmt_ap(seeded['mean_ap'])}): elastic minus it {_elastic_against(seeded)}.")
    return text


def _elastic_against(b: Mapping) -> str:
    """"AP d ± sd [lo, hi] (over seeds [..]), GFLOPs ratio r ± sd [lo, hi]": elastic against
    one fixed run of :func:`best_fixed`."""
    d, ratio = b["elastic_ap_minus_best"], b["elastic_gflops_over_best"]
    return (f"AP {mean_sd(d, fmt_dap)} {ci(d['interval'], fmt_dap)}{over_seeds(d)}, GFLOPs "
            f"ratio {mean_sd(ratio, lambda x: num(x, '.3f'))} "
            f"{ci(ratio['interval'], lambda x: num(x, '.3f'))}")


def verdict(s: Mapping) -> str:
    """The research question answered: at equal AP, from the fixed-front comparison, then in
    AP alone, against the best single fixed resolution (:func:`in_ap_alone`)."""
    saved = s["headline"]["fixed_front"]["compute_saved"]
    if saved["mean"] is None or not saved["interval"]:
        return ("**Answer: not yet measurable** (the fixed-resolution front or elastic is "
                "missing).")
    n = len(saved["seeds"])
    low, high = saved["interval"]
    if low > 0:
        what, note = "beats the fixed-resolution front at equal AP beyond", ""
    elif high < 0:
        what, note = ("costs more than the fixed-resolution front at equal AP beyond",
                      ", which excludes a saving")
    else:
        what, note = ("does not beat the fixed-resolution front at equal AP beyond",
                      ", which includes no saving")
    text = (f"**Answer ({n} seed{'s' if n != 1 else ''}): the learned per-image resolution "
            f"{what} the test-image noise**: compute saved at equal AP {pct(saved['mean'])} "
            f"(95 % interval {ci(saved['interval'])}{note}).")
    over_seeds = saved.get("seed_interval")
    if over_seeds:
        lo, hi = over_seeds
        state = ("lies above zero too" if lo > 0 else "lies below zero" if hi < 0
                 else "includes zero: the seeds do not settle it")
        text += (f" Taking the training runs as the sample (sd over seeds "
                 f"{100 * saved['sd']:.1f} points), the Student-t interval of the mean "
                 f"{ci(over_seeds)} {state}.")
    return text + in_ap_alone(s)


def in_ap_alone(s: Mapping) -> str:
    """The verdict's second half: elastic against the best single fixed resolution in AP
    alone (the paired image interval decides), with the GFLOPs they spend; "" until they share
    a seed."""
    b = s.get("best_fixed") or {}
    d = b.get("elastic_ap_minus_best") or {}
    if not d.get("interval"):
        return ""
    low, high = d["interval"]
    what = "the best single fixed resolution trained scores"
    if high < 0:
        answer, noise = f"no: {what} more AP", "beyond"
    elif low > 0:
        answer, noise = f"yes: {what} less AP", "beyond"
    else:
        answer, noise = f"not settled: {what} about as much AP", "within"
    ratio = b["elastic_gflops_over_best"]["mean"]
    return (f" In AP alone the answer is {answer} (`{b['run']}`, φ = {b['phi']:g}; {noise} "
            f"the test-image noise), and elastic spends {num(ratio, '.2f')}× its GFLOPs.")


def elastic_choice(s: Mapping) -> str | None:
    """The elastic detector's choices of φ in one sentence (seed means): predicted against its
    own φ = 1, the scale loss's φ* and the per-image AP-optimal oracle; None without an
    elastic cell."""
    o, gap = (s.get("oracles") or {}).get("elastic"), s.get("gap") or {}
    if not o or not gap:
        return None
    n = o["own"]["AP"]["n"]

    def row(key: str) -> str:
        return f"AP {fmt_ap(o[key]['AP']['mean'])} at {num(o[key]['gflops']['mean'], '.2f')} GFLOPs"
    d = gap["predicted_vs_phi1"]
    return (f"Elastic ({n} seed{'s' if n != 1 else ''}, test split): its predicted φ (mean "
            f"{num(o['own']['mean_phi']['mean'], '.2f')}) gives {row('own')} (predictor "
            f"included), its own detector at φ = 1 {row('phi1')}: "
            f"{fmt_dap(d['mean'])} AP {ci(d['interval'], fmt_dap)} for "
            f"{num(100 * (1 - o['own']['gflops']['mean'] / o['phi1']['gflops']['mean']), '.1f')} % "
            "fewer GFLOPs. "
            f"At the scale loss's optimum φ* it scores {row('loss_optimal')}; the per-image "
            f"AP-optimal φ of the sweep (an oracle that picks on the test labels) "
            f"{row('ap_optimal')}." + _against_fixed(s))


def _against_fixed(s: Mapping) -> str:
    """The fixed φ = 1 detector beside the elastic one, when its cell exists."""
    fixed = (s.get("oracles") or {}).get("fixed_1.00")
    d = (s.get("gap") or {}).get("detector_at_phi1") or {}
    if not fixed or d.get("mean") is None:
        return ""
    n = fixed["own"]["AP"]["n"]
    paired = len(d["seeds"])
    return (f" The fixed detector trained at φ = 1 (`fixed_1.00`, {n} seed{'s' if n != 1 else ''})"
            f" scores AP {fmt_ap(fixed['own']['AP']['mean'])} at "
            f"{num(fixed['own']['gflops']['mean'], '.2f')} GFLOPs; the elastic detector minus the "
            f"fixed one, both at φ = 1, on the seeds both have ({paired}): {fmt_dap(d['mean'])} AP "
            f"{ci(d['interval'], fmt_dap)} (the detector budget).")


def saving(x: Mapping | None) -> str:
    """A compute saving (a seed summary) as "mean [lo, hi]" ("mean ± sd (n seeds) [lo, hi]"
    over several seeds), from a summary in memory or as read back from results.json ("inf"
    strings included)."""
    if x is None or x.get("mean") is None:
        return "n/a"
    iv = [float(v) for v in x["interval"]] if x["interval"] else None
    return f"{seed_mean({**x, 'mean': float(x['mean'])}, pct)} {ci(iv)}"


def seed_mean(x: Mapping, f=pct) -> str:
    """A seed summary's mean, with "± sd (n seeds)" when it covers several seeds."""
    return mean_sd(x, f) if len(x.get("seeds") or []) > 1 else f(x["mean"])


def ap_diff(x: Mapping) -> str:
    """An AP difference (a seed summary) as "mean [lo, hi]", with "± sd (n seeds)" over
    several seeds."""
    return f"{seed_mean(x, fmt_dap)} {ci(x['interval'], fmt_dap)}"


def over_seeds(x: Mapping) -> str:
    """" (over seeds [lo, hi])": the Student-t interval of an AP difference's seed mean, with
    the training runs as the sample, when ``x`` has one; else ""."""
    over = x.get("seed_interval")
    return f" (over seeds {ci(over, fmt_dap)})" if over else ""


def fewer_seeds(x: Mapping, a: Mapping) -> str:
    """The suffix " (at s0)" when the seed summary ``x`` covers fewer seeds than the row ``a``
    (a comparison paired at the seeds both runs have), else ""."""
    seeds = list(x.get("seeds") or [])
    return f" (at {seed_names({'seeds': seeds})})" if seeds and seeds != list(a["seeds"]) else ""


def seed_names(a: Mapping) -> str:
    """An ablation row's seeds: "s0", "s0,1,2"."""
    return "s" + ",".join(str(s) for s in a.get("seeds") or [a["seed"]])


def ablation_ap(a: Mapping) -> str:
    """An ablation row's AP, with the sd over its seeds when it has several."""
    sd = a.get("AP_sd")
    return fmt_ap(a["AP"]) + (f" ± {fmt_ap(sd)}" if sd is not None else "")


def against_front(a: Mapping) -> str:
    """An elastic row against the fixed front: its compute saved at equal AP, or, when it
    scores above every point of the front (saving unbounded), its AP gain at equal GFLOPs."""
    saved = a.get("compute_saved_vs_fixed_front")
    gain = a.get("ap_gain_vs_fixed_front")
    if saved and _unbounded(saved.get("mean")) and gain and gain.get("mean") is not None:
        return f"above every point of the fixed front, AP gain at equal GFLOPs {ap_diff(gain)}"
    return f"compute saved against the fixed front {saving(saved)}"


def _above_best_fixed(a: Mapping) -> str | None:
    """"AP +x [lo, hi], at r× its GFLOPs" when an elastic row's paired AP difference to the
    best single fixed resolution clears the test-image noise, else None."""
    best = a.get("vs_best_fixed")
    d = best and best["ap_minus"]
    if not d or not d.get("interval") or d["interval"][0] <= 0:
        return None
    ratio = best["gflops_ratio"]
    return f"AP {ap_diff(d)}, at {seed_mean(ratio, lambda x: num(x, '.3f'))}× its GFLOPs"


def beats_best_fixed(a: Mapping) -> str:
    """"; it also scores above the best single fixed resolution …" when it does beyond the
    test-image noise, else ""."""
    above = _above_best_fixed(a)
    return (f"; it also scores above the best single fixed resolution "
            f"(`{a['vs_best_fixed']['run']}`), {above}" if above else "")


def variants_above_best_fixed(s: Mapping) -> str | None:
    """The elastic variants (ablations) that score above the best single fixed resolution
    beyond the test-image noise, in one sentence; None when none does."""
    rows = [a for a in s.get("ablations") or [] if a["run"] != "elastic" and _above_best_fixed(a)]
    if not rows:
        return None
    return ("Elastic variants above it beyond the test-image noise: "
            + "; ".join(f"`{a['run']}` ({a['note']}, {seed_names(a)}) "
                        f"{_above_best_fixed(a)}" for a in rows) + ".")


def ablation_findings(s: Mapping) -> str | None:
    """The ablations against elastic of the same seeds, each with its paired AP difference
    and whether that difference clears the test-image noise; None until one is trained."""
    rows = s.get("ablations") or []
    base = next((a for a in rows if a["run"] == "elastic"), None)
    others = [a for a in rows if a["run"] != "elastic" and a.get("ap_minus_elastic")]
    if base is None or not others:
        return None

    def point(a: Mapping) -> str:
        return (f"AP {ablation_ap(a)} at {num(a['gflops'], '.2f')} GFLOPs (mean φ "
                f"{num(a['mean_phi'], '.2f')}, Pearson(u, u*) {num(a['pearson_u'], '.2f')}, "
                f"{against_front(a)})")

    def effect(d: Mapping) -> str:
        lo, hi = d["interval"]
        where = ("lower beyond" if hi < 0 else "higher beyond" if lo > 0 else "within")
        return f"AP {ap_diff(d)} against elastic, {where} the test-image noise"

    def named(a: Mapping) -> str:
        seeds = a.get("seeds") or [a["seed"]]
        return f"`{a['run']}`" + (f" (seeds {', '.join(map(str, seeds))})"
                                  if len(seeds) > 1 else "")
    parts = [f"{named(a)}, {a['note']}: {point(a)}; {effect(a['ap_minus_elastic'])}"
             f"{beats_best_fixed(a)}" for a in others]
    if all(len(a.get("seeds") or [a["seed"]]) == 1 for a in rows):
        scope = (f"seed {base['seed']}, one training run each, so their intervals cover the test "
                 "images but not the spread over training runs")
    else:
        scope = ("the first seed, and the seeds named for a run trained at more: the mean over "
                 "them ± the sd, paired against elastic of the same seeds; a one-seed interval "
                 "covers the test images but not the spread over training runs")
    return f"**Ablations** ({scope}): {named(base)} {point(base)}. " + ". ".join(parts) + "."


def latency_at_sizes(s: Mapping) -> str | None:
    """How the latency saving follows the FLOPs saving at the latency cell's other processing
    sizes (time and FLOPs only); None when the cell timed no other size."""
    lat = s.get("latency") or {}
    others = lat.get("other_sizes") or []
    if not others:
        return None
    parts = [f"at a short side of {o['base_size']} px latency saved {pct(o['latency_saved'])} "
             f"{ci(o['latency_saved_interval'])} for {pct(o['flops_saved'])} of the FLOPs "
             f"(ratio {num(o['latency_to_flops_saving'], '.2f')}; the predictor "
             f"{num(100 * o['predictor']['share_of_reference_ms'], '.1f')} % of the fixed "
             "detector's time)" for o in others]
    trained = lat.get("base_size")
    return ("With the same per-image φ and the short side raised from "
            + (f"the {trained} px the detectors were trained at" if trained
               else "the size the detectors were trained at")
            + " (time and FLOPs only: accuracy there is not measured), " + "; ".join(parts)
            + ".")


def latency_finding(s: Mapping) -> str | None:
    """The latency cell in one sentence: time saved against FLOPs saved at the size the
    detectors were trained at (issue 16's target), then at the cell's other sizes."""
    lat = s.get("latency")
    if not lat:
        return None
    m = lat.get("machine") or {}
    trained = f"at the {lat['base_size']} px" if lat.get("base_size") else "at the size"
    text = (f"**Latency** (paired in one process, batch 1, {m.get('device_name', 'n/a')}, "
            f"{m.get('torch_threads', 'n/a')} thread(s)): {trained} the detectors were trained "
            f"at, elastic against the fixed detector: latency saved {pct(lat['latency_saved'])} "
            f"{ci(lat['latency_saved_interval'])}, FLOPs saved {pct(lat['flops_saved'])} (ratio "
            f"{num(lat['latency_to_flops_saving'], '.2f')}; the target is at least 0.8).")
    sizes = latency_at_sizes(s)
    return text + (f" {sizes}" if sizes else "")


def readme_summary(s: Mapping) -> str:
    """The README's benchmark summary: the verdict, elastic's choices, the best fixed
    resolution, multi-scale's reach, the ablations trained so far and the latency cell."""
    parts = [verdict(s)]
    if s.get("headline") is not None:
        parts += [elastic_choice(s), best_fixed(s), variants_above_best_fixed(s),
                  multiscale_never_reaches(s), ablation_findings(s)]
    return " ".join(p for p in parts + [latency_finding(s)] if p)


def status_line(cells: Sequence[str], missing: Sequence[str]) -> str:
    """The README's count of trained cells, with their names."""
    total = len(cells) + len(missing)
    return (f"**Status: {len(cells)} of {total} cells trained** ("
            + ", ".join(f"`{c}`" for c in sorted(cells)) + ")")
