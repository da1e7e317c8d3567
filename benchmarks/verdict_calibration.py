"""Are the leaderboard's verdicts calibrated? The statistics tested by simulation.

    python benchmarks/verdict_calibration.py --out results/statistics/calibration

Two kinds of check, each repeated many times with a known truth:

1. **Simulated records** (:mod:`lort.testing.simulation`): comparisons of the shape of a
   real leaderboard (16 methods, 3 stage-2 seeds, 6 settings each, K = 10, 20 validation
   and 1,000 test images a class). Under the null every method is the same method run with
   other seeds; any "below the reference" verdict is false, and the family-wise rate of a
   false verdict (at least one in a table) must stay at or under 5%. With a planted effect
   (one method worse by about 1, 2, 3 or 6 points) the power (how often that method is
   called below) is reported.
2. **Real fits through ``compare``**: on synthetic long-tailed features, ``ce`` against a
   twin whose head differs only by noise (its starting classifier perturbed by 1e-3 of its
   scale, a new draw each repetition), 3 stage-2 seeds: the rate at which the twin (or
   ``ce``) is called below the other.

Writes ``<out>.json`` and ``<out>.md``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from _common import run_main

EFFECTS = {
    "null": 0.0,
    "about 1 point": -0.035,
    "about 2 points": -0.07,
    "about 3 points": -0.1,
    "about 6 points": -0.2,
}


def simulated(n: int, resamples: int, methods: int, seed0: int) -> dict:
    from lort.analysis.uncertainty import compare_to_reference
    from lort.stage2.selection import better
    from lort.testing.simulation import choose_on_validation, simulated_comparison

    out = {}
    for label, effect in EFFECTS.items():
        false_any, found, false_rows, widths, t0 = 0, 0, 0, [], time.perf_counter()
        for i in range(n):
            rng = np.random.default_rng(seed0 + 1000 * list(EFFECTS).index(label) + i)
            planted = {methods - 1: effect} if effect else {}
            rec, vl, tl = simulated_comparison(rng, methods=methods, effects=planted, test_per_class=1000)
            choose_on_validation(rec, vl, better)
            v = compare_to_reference(rec, vl, tl, better, resamples=resamples, seed=i)
            wrong = [
                m for m, d in v.differences.items() if d.tier == "below the reference" and int(m[1:]) not in planted
            ]
            false_any += bool(wrong)
            false_rows += len(wrong)
            found += any(v.differences[f"m{k}"].tier == "below the reference" for k in planted)
            widths.append(float(np.median([d.high - d.low for d in v.differences.values() if d.tier != "reference"])))
        out[label] = {
            "effect_logit": effect,
            "comparisons": n,
            "family_wise_false_below_rate": false_any / n,
            "false_below_per_row": false_rows / (n * (methods - 1)),
            "power": found / n if effect else None,
            "median_interval_width_points": round(100 * float(np.median(widths)), 2),
            "seconds": round(time.perf_counter() - t0, 1),
        }
        print(label, out[label], flush=True)
    return out


def real_twins(n: int, resamples: int) -> dict:
    import torch

    from lort.stage2.compare import compare
    from lort.stage2.heads import LinearHead
    from lort.stage2.methods import METHODS, Method
    from lort.stage2.schedule import Schedule
    from lort.testing import synthetic_features

    class NoisyTwin(Method):
        name = "ce_twin"
        title = "CE re-training, start perturbed by noise"
        source = "ce with its starting classifier perturbed by 1e-3 of its scale"
        deviations = ("a calibration device, not a method",)
        draw = 0

        def build_head(self, ctx, hps):
            gen = torch.Generator().manual_seed(10_000 * self.draw + ctx.seed)
            w = ctx.init_weight
            noise = torch.randn(w.shape, generator=gen).to(w.device) * 1e-3 * w.abs().mean()
            return LinearHead(w + noise, ctx.init_bias, len(hps))

    twin = NoisyTwin()
    below, t0 = 0, time.perf_counter()
    for i in range(n):
        twin.draw = i
        fs = synthetic_features(seed=i, test_per_class=200)
        results = compare(fs, [METHODS["ce"], twin], Schedule(epochs=4), seeds=3, resamples=resamples)
        below += any(r.difference.tier == "below the reference" for r in results)
    return {
        "comparisons": n,
        "false_below_rate": below / n,
        "seconds": round(time.perf_counter() - t0, 1),
        "setting": "synthetic_features(seed=i, test_per_class=200): K = 5, D = 8; ce vs its noise twin; 3 seeds; 4 epochs",
    }


def markdown(record: dict) -> str:
    lines = [
        "# Calibration of the leaderboard's verdicts",
        "",
        f"Command: `{record['command']}`. Machine: {record['cpu']}.",
        "",
        f"## Simulated comparisons ({record['methods']} methods, 3 seeds, 6 settings, K = 10, 20 validation and "
        f"1,000 test images a class; {record['resamples']} bootstrap resamples)",
        "",
        "| planted effect on one method | comparisons | family-wise false 'below' rate | false 'below' per row | "
        "power | median interval width (points) |",
        "|---|---|---|---|---|---|",
    ]
    for label, r in record["simulated"].items():
        power = "–" if r["power"] is None else f"{r['power']:.2f}"
        lines.append(
            f"| {label} | {r['comparisons']} | {r['family_wise_false_below_rate']:.3f} | "
            f"{r['false_below_per_row']:.4f} | {power} | {r['median_interval_width_points']:.2f} |"
        )
    t = record.get("real_twins")
    if t:
        lines += [
            "",
            "## Real fits: CE against its noise twin through `compare`",
            "",
            f"{t['comparisons']} comparisons ({t['setting']}): false 'below the reference' rate "
            f"**{t['false_below_rate']:.3f}**.",
        ]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="path prefix of the .json and .md written")
    ap.add_argument("--comparisons", type=int, default=200, help="simulated comparisons per effect")
    ap.add_argument("--resamples", type=int, default=1000)
    ap.add_argument("--methods", type=int, default=16)
    ap.add_argument("--twins", type=int, default=40, help="real compare() runs of CE against its noise twin")
    args = ap.parse_args()
    import sys

    from lort.io import write_json, write_text
    from lort.runtime.precision import cpu_capability

    record = {
        "command": "python benchmarks/verdict_calibration.py " + " ".join(sys.argv[1:]),
        "cpu": cpu_capability().describe(),
        "methods": args.methods,
        "resamples": args.resamples,
        "simulated": simulated(args.comparisons, args.resamples, args.methods, 0),
    }
    if args.twins:
        record["real_twins"] = real_twins(args.twins, args.resamples)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json(out.with_suffix(".json"), record)
    write_text(out.with_suffix(".md"), markdown(record))
    print(json.dumps(record["simulated"], indent=1))


if __name__ == "__main__":
    run_main(main)
