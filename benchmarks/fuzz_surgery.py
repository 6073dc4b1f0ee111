"""Fixed-seed fuzz campaign of the surgery, written to benchmarks/results/fuzz_surgery.{json,md}.

Zero patterns: every graph of tests/zoo/ gets random dead heads and FFN dims per layer (none, all, one,
all but one, a run, or a random subset of each, per layer), zeroed on the output side (Q/K/V + O, W1 + W2)
or only the input side (Q/K/V, W1), with the dead structure's biases kept or zeroed too. Each pattern is
shrunk and compared with the unshrunk graph (tests/zoo_check.py: fp32 within 1e-4; int8 against the unshrunk
int8 graph, within zoo_check.INT8_ATOL on all but INT8_FLIP_SHARE of the output units and INT8_BOUND everywhere)
and counted as exact / kept / refused / wrong / traceback.

Broken graphs (--broken N): structural damage to zoo graphs (a deleted node, a wrong initializer dtype, a
truncated initializer, a duplicated tensor name, a cycle), each given to `compress shrink`, `compress
quantize` and `compress bench`, which must exit 2 with exactly one line on stderr and no traceback.

    HF_HUB_OFFLINE=1 python benchmarks/fuzz_surgery.py [--patterns 2000] [--broken 200] [--seed 0]

--patterns 0 or --broken 0 skips that campaign and keeps its section of the results file as the earlier run
wrote it (each section records the command and date that produced it).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import platform
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

import zoo_check  # noqa: E402

OUTCOMES = ("exact", "kept", "refused", "wrong", "traceback")
SUBSET_KINDS = ("none", "all", "one", "all_but_one", "run", "random")


# ------------------------------------------------------------------------------ zero patterns
def subset(rng: np.random.Generator, n: int) -> list[int]:
    """Indices out of range(n) of a randomly chosen kind (edge cases as often as random subsets)."""
    if n == 0:
        return []
    kind = SUBSET_KINDS[rng.integers(len(SUBSET_KINDS))]
    if kind == "none":
        return []
    if kind == "all":
        return list(range(n))
    if kind == "one":
        return [int(rng.integers(n))]
    if kind == "all_but_one":
        skip = int(rng.integers(n))
        return [i for i in range(n) if i != skip]
    if kind == "run":
        a, b = sorted(rng.integers(0, n + 1, 2))
        return list(range(a, b))
    return sorted(rng.choice(n, int(rng.integers(0, n + 1)), replace=False).tolist())


def geometries(names: list[str]) -> dict[str, tuple[int, int, list[int]]]:
    out = {}
    for name in names:
        try:
            out[name] = zoo_check.geometry(name)
        except AssertionError:  # weights the harness cannot locate (static QOperator): no dims to pick
            m = zoo_check.meta(name)
            out[name] = (2, m["num_heads"], [0, 0])
    return out


def patterns(n: int, seed: int, names: list[str]):
    rng = np.random.default_rng(seed)
    geo = geometries(names)
    for k in range(n):
        name = names[k % len(names)]  # every graph as often as the others
        layers, heads, widths = geo[name]
        yield {
            "name": name,
            "side": ("both", "input")[int(rng.integers(2))],
            "biases": bool(rng.integers(2)),
            "heads": {i: subset(rng, heads) for i in range(layers)},
            "dims": {i: subset(rng, widths[i]) for i in range(layers)},
        }


def zero_campaign(n: int, seed: int) -> dict:
    names = zoo_check.entries()
    counts = {name: Counter() for name in names}
    refusals, problems, worst = Counter(), [], {"fp32": 0.0, "int8": 0.0}
    flips = Counter()  # int8 exact cases with some output units beyond INT8_ATOL: name -> count
    t0 = time.time()
    for case in patterns(n, seed, names):
        rec = zoo_check.fuzz_case(case["name"], case["heads"], case["dims"], case["side"], case["biases"])
        counts[case["name"]][rec["outcome"]] += 1
        if rec["outcome"] == "refused":
            refusals[rec["message"]] += 1
        elif rec["outcome"] != "exact":
            problems.append({k: rec[k] for k in ("name", "side", "biases", "heads", "dims", "outcome", "message")})
            if rec["outcome"] == "traceback":
                problems[-1]["trace"] = rec["trace"]
        if rec["outcome"] == "exact" and rec["max_abs_diff"] is not None:
            kind = "int8" if zoo_check.meta(case["name"]).get("int8") else "fp32"
            worst[kind] = max(worst[kind], rec["max_abs_diff"])
            flips[case["name"]] += bool(rec["units_differing"])
    total = Counter()
    for c in counts.values():
        total.update(c)
    return {
        "patterns": n,
        "seed": seed,
        "seconds": round(time.time() - t0, 1),
        "totals": {k: total[k] for k in OUTCOMES},
        "per_graph": {name: {k: c[k] for k in OUTCOMES} for name, c in counts.items()},
        "refusals": dict(refusals.most_common()),
        "max_abs_diff_of_exact": worst,
        "tolerances": {
            "fp32": 1e-4,
            "int8_atol": zoo_check.INT8_ATOL,
            "int8_flip_share": zoo_check.INT8_FLIP_SHARE,
            "int8_bound": zoo_check.INT8_BOUND,
        },
        "int8_exact_with_flips": flips,
        "problems": problems[:50],
    }


# ------------------------------------------------------------------------------ broken graphs
def run_cli(argv: list[str]) -> tuple[int | str, str]:
    """(exit code, stderr) of the command line in-process; 'traceback' when an exception escapes."""
    from compress.cli.main import main

    err, out = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
            rc = main(argv)
    except SystemExit as e:
        rc = e.code
    except BaseException as e:  # noqa: BLE001 - exactly what is being counted
        return "traceback", f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    return rc, err.getvalue()


def broken_campaign(n: int, seed: int) -> dict:
    import onnx

    rng = np.random.default_rng(seed + 1)
    names = [name for name in zoo_check.entries() if not zoo_check.meta(name).get("external_data")]
    counts = {verb: Counter() for verb in ("shrink", "quantize", "bench")}
    per_damage = {kind: Counter() for kind in zoo_check.DAMAGE}
    problems = []
    t0 = time.time()
    with tempfile.TemporaryDirectory(prefix="fuzz-broken-") as tmp:
        for k in range(n):
            name, kind = (
                names[k % len(names)],
                zoo_check.DAMAGE[k % len(zoo_check.DAMAGE)],
            )  # 23 graphs, 5 kinds: every pair
            case = Path(tmp) / f"case{k}"
            case.mkdir()
            src = case / "in.onnx"
            onnx.save(zoo_check.damage(zoo_check.load(name), kind, rng), str(src))
            commands = {
                "shrink": ["shrink", str(src), str(case / "shrunk.onnx")],
                "quantize": ["quantize", str(src), "-o", str(case / "q.onnx")],
                "bench": [
                    "bench",
                    str(src),
                    "--batch-sizes",
                    "1",
                    "--seq-lens",
                    "8",
                    "--iterations",
                    "1",
                    "--warmup",
                    "0",
                ],
            }
            for verb, argv in commands.items():
                rc, err = run_cli(argv)
                lines = err.splitlines()  # all of stderr: a blank line or a bar before the error counts too
                if rc == 2 and len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err:
                    outcome = "refused"
                elif rc == "traceback":
                    outcome = "traceback"
                elif rc == 0:
                    outcome = "accepted"
                else:
                    outcome = "not_one_line"
                counts[verb][outcome] += 1
                per_damage[kind][outcome] += 1
                if outcome != "refused" and len(problems) < 50:
                    problems.append({"graph": name, "damage": kind, "verb": verb, "rc": rc, "stderr": err[-500:]})
    return {
        "graphs": n,
        "seed": seed,
        "seconds": round(time.time() - t0, 1),
        "per_command": {verb: dict(c) for verb, c in counts.items()},
        "per_damage": {kind: dict(c) for kind, c in per_damage.items()},
        "problems": problems,
    }


# ------------------------------------------------------------------------------ report
def machine() -> dict:
    import onnx
    import onnxruntime

    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if "model name" in line
        ),
        platform.processor(),
    )
    import os

    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        "numpy": np.__version__,
    }


# What the campaign's numbers cannot say by themselves (checked by hand on the campaign of 2026-12-03).
NOTES = [
    "A `wrong` int8 case can be a rounding effect, not a surgery bug: the one of the campaign of 2026-12-03 "
    "(`bert_optimum_O2_int8_dynamic`, every head of layer 0 and 127 of its 128 FFN dims dead, biases zeroed) differs "
    "from the unshrunk graph by 0.061 on 132 of 188 tokens, and so does the unshrunk graph itself with its fused "
    "SkipLayerNormalization written as Add + LayerNormalization and nothing removed (0.061, 132 of 188): the "
    "rewrite a removed block needs changes float rounding by ~1e-7 in layer 0, and dynamic int8 re-rounds every "
    "activation after it.",
    "The int8 criterion fails a bug of size 1e-2: with one entry of a removed block's output bias moved by 1e-2 "
    "inside the surgery, every pattern that removed a block was counted `wrong` on the fp32 and dynamic int8 graphs "
    "(8/8, 12/12 and 15/15 on the three dynamic int8 graphs, 22-28 per fp32 graph, of 400 patterns); on the static QDQ graphs that bias passes through the graph's "
    "own fake-quant, which rounds the change away (outputs unchanged). With every per-channel weight scale of a "
    "sliced dynamic int8 projection 1% off, 43 of 43 mutated patterns were `wrong`.",
    "Before exporters/surgery/int8_range.py (dead heads / FFN dims kept where their input column is not exactly 0 "
    "in dynamic int8), cutting them moved the run-time quantization scale: on the same 2,000 first patterns the "
    "previous surgery gave 1 `wrong`, and 3-8% of dynamic int8 patterns differed on some units (up to 6e-2; a "
    "150-pattern probe per graph).",
]


def _machine_line(m: dict) -> str:
    return f"{m['cpu']} ({m['cores']} cores), onnxruntime {m['onnxruntime']}, onnx {m['onnx']}"


def _provenance(section: dict) -> list[str]:
    return [
        f"Command: `{section['command']}`  ",
        f"Machine: {_machine_line(section['machine'])}, {section['date']}",
        "",
    ]


def write_md(path: Path, data: dict) -> None:
    lines = ["# Surgery fuzz campaign", ""]
    if data.get("zero_patterns"):
        lines += _zero_md(data["zero_patterns"])
    if data.get("broken_graphs"):
        lines += _broken_md(data["broken_graphs"])
    path.write_text("\n".join(lines) + "\n")


def _zero_md(z: dict) -> list[str]:
    t = z["tolerances"]
    lines = [
        f"## Zero patterns: {z['patterns']} (seed {z['seed']}, {z['seconds']:.0f} s)",
        "",
        *_provenance(z),
        "Every zoo graph (tests/zoo/) in turn; per layer a random set of dead heads and of dead FFN dims (none, all, one, "
        "all but one, a run or a random subset, drawn per layer), zeroed on the output side or the input side only, "
        "the dead structure's biases kept or zeroed. Shrunk and compared with the unshrunk graph on 3 padded batches: "
        f"fp32 within {t['fp32']:g}; int8 against the unshrunk int8 graph within {t['int8_atol']:g} on all but "
        f"{t['int8_flip_share']:.0%} of the output units (a token of last_hidden_state, a sequence of logits) and within "
        f"{t['int8_bound']:g} everywhere, since a value on an int8 rounding boundary can land one step away after any "
        "float-rounding change upstream and that moves its own units only (tests/zoo_check.py). exact = same outputs, dead structure removed (or kept where allowed: input-side "
        "dead structure of int8 graphs); kept = same outputs but structure left in; refused = a one-line compress error; "
        "wrong = different outputs; traceback = any other exception.",
        "",
        "| outcome | " + " | ".join(OUTCOMES) + " |",
        "|---|" + "---|" * len(OUTCOMES),
        "| **all** | " + " | ".join(str(z["totals"][k]) for k in OUTCOMES) + " |",
    ]
    for name, c in z["per_graph"].items():
        lines.append(f"| `{name}` | " + " | ".join(str(c[k]) for k in OUTCOMES) + " |")
    lines += [
        "",
        f"Largest difference among exact cases: fp32 {z['max_abs_diff_of_exact']['fp32']:.2g}, "
        f"int8 {z['max_abs_diff_of_exact']['int8']:.2g}. int8 exact cases with rounding flips (some units beyond "
        f"{t['int8_atol']:g}): "
        + (", ".join(f"`{k}` {v}" for k, v in z["int8_exact_with_flips"].items() if v) or "none")
        + ".",
        "",
        "Refusals (message: count):",
        "",
    ]
    lines += [f"- {msg}: {count}" for msg, count in z["refusals"].items()] or ["- none"]
    if z["problems"]:
        lines += ["", "Problems (first ones; all in the JSON):", ""]
        lines += [
            f"- `{p['name']}` {p['side']} biases={p['biases']}: {p['outcome']}: {p['message']}"
            for p in z["problems"][:10]
        ]
    return lines + ["", "Notes:", ""] + [f"- {note}" for note in NOTES] + [""]


def _broken_md(b: dict) -> list[str]:
    kinds = sorted({k for c in b["per_command"].values() for k in c})
    lines = [
        f"## Broken graphs: {b['graphs']} (seed {b['seed']}, {b['seconds']:.0f} s)",
        "",
        *_provenance(b),
        "Zoo graphs damaged in one way each ("
        + ", ".join(zoo_check.DAMAGE)
        + "), in turn, given to `compress shrink IN OUT`, `compress quantize IN -o OUT` and `compress bench IN` "
        "(batch 1 x 8 tokens, one run). refused = exit 2 with stderr exactly one `error:` line and no traceback; "
        "accepted = exit 0; not_one_line = another exit code or more lines; traceback = an exception escaped.",
        "",
        "| command | " + " | ".join(kinds) + " |",
        "|---|" + "---|" * len(kinds),
    ]
    for verb, c in b["per_command"].items():
        lines.append(f"| {verb} | " + " | ".join(str(c.get(k, 0)) for k in kinds) + " |")
    lines += ["", "| damage (x 3 commands) | " + " | ".join(kinds) + " |", "|---|" + "---|" * len(kinds)]
    for kind, c in b["per_damage"].items():
        lines.append(f"| {kind} | " + " | ".join(str(c.get(k, 0)) for k in kinds) + " |")
    if b["problems"]:
        lines += ["", "Problems (first ones; all in the JSON):", ""]
        lines += [f"- `{q['graph']}` {q['damage']} `{q['verb']}`: rc {q['rc']}" for q in b["problems"][:10]]
    return lines


def _earlier(out: Path, section: str) -> dict | None:
    """A section of the results file as an earlier run wrote it, with that run's command, machine and date
    (files written before sections carried their own have them at the top level only)."""
    path = out.with_suffix(".json")
    if not path.exists():
        return None
    old = json.loads(path.read_text())
    found = old.get(section)
    if found:
        for key in ("command", "machine", "date"):
            found.setdefault(key, old.get(key))
    return found


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--patterns", type=int, default=2000, help="zero patterns (0: keep the earlier section)")
    p.add_argument("--broken", type=int, default=200, help="broken graphs (0: keep the earlier section)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "fuzz_surgery"))
    a = p.parse_args()
    out = Path(a.out)
    here = {
        "command": "HF_HUB_OFFLINE=1 python benchmarks/fuzz_surgery.py " + " ".join(sys.argv[1:]),
        "machine": machine(),
        "date": time.strftime("%Y-%m-%d", time.gmtime()),
    }
    here["command"] = here["command"].strip()
    zero = {**zero_campaign(a.patterns, a.seed), **here} if a.patterns else _earlier(out, "zero_patterns")
    broken = {**broken_campaign(a.broken, a.seed), **here} if a.broken else _earlier(out, "broken_graphs")
    data = {**here, "zero_patterns": zero, "broken_graphs": broken}
    out.with_suffix(".json").write_text(json.dumps(data, indent=1, default=str) + "\n")
    write_md(out.with_suffix(".md"), data)
    print(
        json.dumps(
            {
                "zero_patterns": (zero or {}).get("totals"),
                "broken": (broken or {}).get("per_command"),
            }
        )
    )


if __name__ == "__main__":
    main()
