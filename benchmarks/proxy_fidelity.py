"""Can `lort tune`'s short proxies rank stage-1 recipes as their full schedules do?

    python benchmarks/proxy_fidelity.py --proxy-epochs 15 --out results/stage1_recipes/proxy_ir100 \\
        "field CE=results/cifar10_lt_ir100_ce_e200" "mixup=results/cifar10_lt_ir100_mixup_e200" ...

Each argument is ``LABEL=RUN``, a finished ``lort run`` folder. For each, the run's own config is
cut to the proxy schedule exactly as ``lort tune`` cuts it (``proxy_config``: the epochs, the
warm-up scaled by the same factor) and trained once; its score is the one a trial gets (the
best validation balanced accuracy over the proxy's epochs). The proxy's checkpoint is then
scored once on test, and the table sets the proxy's validation score and test accuracy beside
the full run's. It separates the two ways a proxy search can go wrong: the proxy ranks recipes
unlike the full schedule (compare the test columns), and the validation split cannot see the
difference (compare the proxy's validation and test columns). The test figures choose nothing
here: no default or choice of lort is taken from them.

A recipe whose proxy folder holds a summary is not trained again (the command resumes);
``<out>.md`` and ``<out>.json`` are rewritten after each recipe.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from _common import default_root, finished_stage1, run_main

from lort.config import load_config
from lort.errors import LortError
from lort.io import write_json, write_text
from lort.stage1.train import train
from lort.stage1.tune import proxy_config, score_resolution


def _slug(label: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", label.lower()).strip("_") or "recipe"


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _parse(spec: str) -> tuple[str, Path]:
    label, sep, run = spec.partition("=")
    if not sep or not label or not run:
        raise LortError(f"{spec!r}: expected LABEL=RUN")
    return label, Path(run)


def best_so_far(curve: list[dict]) -> list[float]:
    out, best = [], -1.0
    for record in curve:
        best = max(best, record["val_balanced_acc"])
        out.append(best)
    return out


def ahead_from(mine: list[float], other: list[float]) -> int | None:
    """The first epoch from which ``mine`` stays strictly above ``other`` to the end (1-based);
    None if it never does."""
    n = min(len(mine), len(other))
    if n == 0 or mine[n - 1] <= other[n - 1]:
        return None
    behind = [e for e in range(n) if mine[e] <= other[e]]
    return (behind[-1] + 2) if behind else 1


def markdown(rows: list[dict], epochs: int, command: str, resolution: dict | None) -> str:
    leader = max(rows, key=lambda r: r["proxy_val"])["label"]
    lines = [
        f"# {epochs}-epoch proxies against the full schedules",
        "",
        f"Made by `{command}`. Each proxy is the run's config cut as `lort tune` cuts it; its score is",
        "a trial's (best validation balanced accuracy over the proxy's epochs). Accuracies in %.",
        "Ranks: 1 is the highest in that column.",
        "",
        "| recipe | proxy: val (trial score) | rank | proxy: test | rank | full: val | full: stage-1 test | rank "
        f"| full run's best val ahead of {leader}'s from epoch | proxy minutes |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]

    def ranks(key):
        order = sorted(rows, key=lambda r: -r[key])
        return {r["label"]: 1 + order.index(r) for r in rows}

    rp, rt, rf = ranks("proxy_val"), ranks("proxy_test"), ranks("full_test")
    for r in rows:
        lines.append(
            f"| {r['label']} | {r['proxy_val']:.2f} | {rp[r['label']]} | {r['proxy_test']:.2f} | {rt[r['label']]} "
            f"| {r['full_val']:.2f} | {r['full_test']:.2f} | {rf[r['label']]} "
            f"| {'–' if r['label'] == leader else r['ahead_of_leader_from'] or 'never'} | {r['minutes']:.1f} |"
        )
    if resolution:
        lines += [
            "",
            f"Validation split: {resolution['images']} images, {resolution['min_per_class']} in its smallest class; "
            f"near the best proxy score one trial's standard error is {100 * resolution['standard_error']:.2f} points "
            f"and two scores closer than {100 * resolution['separation']:.2f} are not told apart (`score_resolution`).",
        ]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="output path without suffix; proxy runs go in <out>/")
    ap.add_argument("--proxy-epochs", type=int, default=15)
    ap.add_argument("recipes", nargs="+", help="LABEL=RUN, finished lort run folders")
    args = ap.parse_args()
    out = Path(args.out)
    specs = [_parse(s) for s in args.recipes]
    fulls = [finished_stage1(run) for _, run in specs]  # every input checked before any training
    command = f"python benchmarks/proxy_fidelity.py --proxy-epochs {args.proxy_epochs} --out {args.out} " + " ".join(
        f'"{s}"' for s in args.recipes
    )
    rows, resolution = [], None
    for (label, run), full in zip(specs, fulls, strict=True):
        cfg = load_config(run / "config.yaml")
        if default_root() and cfg.data.root is None:
            cfg = load_config(run / "config.yaml", {"data.root": default_root()})
        proxy = proxy_config(cfg, args.proxy_epochs)
        folder = out / _slug(label)
        done = folder / "summary.json"
        if not done.is_file():
            print(f"{label}: {args.proxy_epochs}-epoch proxy of {run}", flush=True)
            train(proxy, folder, resume=True, evaluate_test=True)
        summary = json.loads(done.read_text())
        curve = _records(folder / "metrics.jsonl")
        dataset = json.loads((folder / "dataset.json").read_text())
        rows.append(
            {
                "label": label,
                "run": str(run),
                "proxy_val": round(100 * max(r["val_balanced_acc"] for r in curve), 2),
                "proxy_test": round(100 * summary["test"]["acc"], 2),
                "full_val": round(100 * full["val_balanced_acc"], 2),
                "full_test": round(100 * full["test"]["acc"], 2),
                "minutes": sum(r["epoch_time_s"] for r in curve) / 60,
                "full_curve": best_so_far(_records(run / "stage1" / "metrics.jsonl")),
                "proxy_schedule": {"epochs": proxy.stage1.epochs, "warmup_epochs": proxy.stage1.warmup_epochs},
            }
        )
        leader = max(rows, key=lambda r: r["proxy_val"])
        for r in rows:  # where the full run overtakes the proxy's winner, read off the full runs' curves
            r["ahead_of_leader_from"] = ahead_from(r["full_curve"], leader["full_curve"])
        best = leader["proxy_val"] / 100
        resolution = score_resolution(best, dataset["val_counts"])
        write_json(out.with_suffix(".json"), {"rows": rows, "resolution": resolution, "command": command})
        write_text(out.with_suffix(".md"), markdown(rows, args.proxy_epochs, command, resolution))
    print(markdown(rows, args.proxy_epochs, command, resolution))


if __name__ == "__main__":
    run_main(main)
