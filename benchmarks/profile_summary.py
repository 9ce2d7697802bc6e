"""A jax.profiler trace, summarised as text: which kernels the device spent its time in.

    python benchmarks/profile_summary.py LOGDIR [--top 15] [--out FILE]

LOGDIR is what `jax.profiler.trace(LOGDIR)` wrote (searched recursively; the
newest trace wins). benchmarks/gpu_speed.py traces the train step and calls
these functions; run alone, this reads a trace taken elsewhere. The summary:

- device time by kernel (GPU: the stream lines of the /device:GPU planes; a
  CPU has none, so there: XLA's thunks, the events carrying an hlo_op), the
  --top kernels with their share and, where the trace names it, the HLO op;
- the time in library kernels (cuDNN/cuBLAS/CUTLASS names: *xmma*, sm90_*,
  cudnn*, cutlass*, *gemm*, nvjet*, ...) against XLA's own (fusions, Triton
  GEMMs), and in kernels of convolutions;
- conv_census(hlo): a compiled program's convolutions by kind (cuDNN custom
  calls `__cudnn$conv*`, cuDNN fusions, cuBLAS GEMMs, XLA `convolution` ops)
  with their feature_group_count / batch_group_count. Vmapped runs turn each
  convolution into a grouped one (feature_group_count = runs, and
  batch_group_count = runs for the weight gradients).

The trace read is the `*.xplane.pb` (jax.profiler.ProfileData), else the
Chrome trace `*.trace.json.gz` beside it. With neither, the summary is one
line saying so and the script still exits 0.
"""
from __future__ import annotations

import argparse
import gzip
import json
import re
from collections import defaultdict
from pathlib import Path

LIBRARY = re.compile(r"xmma|cudnn|cutlass|gemm|nvjet|sm\d\d_|implicit_convolve|winograd|fft|conv2d_grouped|"
                     r"cublas|nchwToNhwc|nhwcToNchw|dgrad|wgrad|fprop", re.I)
XLA_OWN = re.compile(r"fusion|triton", re.I)  # XLA's kernels, its Triton GEMMs included


def is_library(name: str) -> bool:
    """A cuDNN/cuBLAS/CUTLASS kernel, by its name (not one XLA generated)."""
    return bool(LIBRARY.search(name)) and not XLA_OWN.search(name)
# Lines of a device plane that the profiler derives from the streams (counting them would double).
DERIVED = {"XLA Modules", "XLA Ops", "XLA TraceMe", "Steps", "Framework Ops", "Framework Name Scope",
           "Source code", "Async XLA Ops", "Launch Stats", "TensorFlow Name Scope", "TensorFlow Ops"}


def _stats(stats) -> dict:
    out = {}
    for item in stats or ():
        try:
            k, v = item
        except (TypeError, ValueError):
            continue
        out.setdefault(str(k), v)
    return out


def kernels_from_xplane(path: Path) -> tuple[str, dict[str, list]]:
    """(where the events came from, {kernel name: [count, total ns, hlo_op]}) from an .xplane.pb."""
    from jax.profiler import ProfileData

    pd = ProfileData.from_file(str(path))
    table: dict[str, list] = defaultdict(lambda: [0, 0.0, ""])
    devices = [p for p in pd.planes if p.name.startswith("/device:")]
    if devices:
        source = ", ".join(p.name for p in devices)
        for plane in devices:
            lines = list(plane.lines)
            streams = [ln for ln in lines if ln.name.startswith("Stream")] or \
                [ln for ln in lines if ln.name not in DERIVED]
            for line in streams:
                for ev in line.events:
                    row = table[ev.name]
                    row[0] += 1
                    row[1] += ev.duration_ns
                    row[2] = row[2] or str(_stats(ev.stats).get("hlo_op", ""))
    else:
        source = "host threads, events with an hlo_op (XLA's thunks; no /device: plane)"
        for plane in pd.planes:
            for line in plane.lines:
                for ev in line.events:
                    st = _stats(ev.stats)
                    if "hlo_op" in st:
                        row = table[ev.name]
                        row[0] += 1
                        row[1] += ev.duration_ns
                        row[2] = row[2] or str(st["hlo_op"])
    return source, dict(table)


def kernels_from_json(path: Path) -> tuple[str, dict[str, list]]:
    """The same from a Chrome trace (*.trace.json.gz): 'X' events of /device: processes, else with an hlo_op."""
    with gzip.open(path, "rt") as f:
        doc = json.load(f)
    events = doc["traceEvents"] if isinstance(doc, dict) else doc
    names = {e.get("pid"): e.get("args", {}).get("name", "") for e in events
             if e.get("ph") == "M" and e.get("name") == "process_name"}
    threads = {(e.get("pid"), e.get("tid")): e.get("args", {}).get("name", "") for e in events
               if e.get("ph") == "M" and e.get("name") == "thread_name"}
    device_pids = {pid for pid, n in names.items() if str(n).startswith("/device:")}
    table: dict[str, list] = defaultdict(lambda: [0, 0.0, ""])
    for e in events:
        if e.get("ph") != "X":
            continue
        args = e.get("args") or {}
        if device_pids:
            if e.get("pid") not in device_pids or threads.get((e.get("pid"), e.get("tid")), "") in DERIVED:
                continue
        elif "hlo_op" not in args:
            continue
        row = table[e.get("name", "?")]
        row[0] += 1
        row[1] += float(e.get("dur", 0.0)) * 1e3  # us -> ns
        row[2] = row[2] or str(args.get("hlo_op", ""))
    source = ", ".join(sorted(names[p] for p in device_pids)) if device_pids else "events with an hlo_op (no /device: process)"
    return source, dict(table)


def find_trace(logdir: Path) -> tuple[str, Path] | None:
    """The newest trace under logdir: ('xplane', path) or ('json', path)."""
    for kind, pattern in (("xplane", "*.xplane.pb"), ("json", "*.trace.json.gz"), ("json", "*trace.json.gz")):
        found = sorted(logdir.rglob(pattern), key=lambda p: p.stat().st_mtime)
        if found:
            return kind, found[-1]
    return None


def summarise_trace(logdir: Path, top: int) -> list[str]:
    """Text lines: the top kernels by device time, and library kernels against XLA's fusions."""
    found = find_trace(logdir)
    if found is None:
        return [f"no trace file (*.xplane.pb, *.trace.json.gz) found under {logdir}"]
    kind, path = found
    try:
        source, table = kernels_from_xplane(path) if kind == "xplane" else kernels_from_json(path)
    except Exception as e:  # an unreadable xplane: try the Chrome trace beside it
        json_files = sorted(path.parent.glob("*trace.json.gz"))
        if kind == "xplane" and json_files:
            path = json_files[-1]
            source, table = kernels_from_json(path)
        else:
            return [f"trace {path} could not be read: {type(e).__name__}: {e}"]
    total = sum(r[1] for r in table.values())
    lines = [f"trace: {path.name} ({source})"]
    if not total:
        return lines + ["no kernel events with a duration in it"]
    launches = sum(r[0] for r in table.values())
    lines.append(f"kernel time {total / 1e6:.2f} ms in {launches:,} launches of {len(table):,} distinct kernels")
    lines.append(f"{'ms':>9} {'share':>6} {'count':>6}  kernel  [hlo op]")
    for name, (count, ns, op) in sorted(table.items(), key=lambda kv: -kv[1][1])[:top]:
        short = name if len(name) <= 110 else name[:107] + "..."
        lines.append(f"{ns / 1e6:9.3f} {100 * ns / total:5.1f}% {count:6d}  {short}" + (f"  [{op}]" if op and op != name else ""))
    lib = sum(ns for name, (_, ns, _) in table.items() if is_library(name))
    conv = sum(ns for name, (_, ns, op) in table.items() if "conv" in (name + " " + op).lower())
    grouped = sorted({name for name in table if "group" in name.lower()})
    lines.append(f"library kernels (cuDNN/cuBLAS/CUTLASS names): {100 * lib / total:.1f}% of kernel time; "
                 f"XLA's own kernels (fusions etc.): {100 * (total - lib) / total:.1f}%")
    lines.append(f"kernels of convolutions (name or hlo op contains 'conv'): {100 * conv / total:.1f}% of kernel time")
    if grouped:
        lines.append(f"kernels named 'group*': {len(grouped)}, e.g. {grouped[0][:100]}")
    return lines


def conv_census(hlo: str) -> list[str]:
    """The optimized HLO's convolutions by kind, with their group counts."""
    kinds: dict[tuple[str, int, int], int] = defaultdict(int)
    for line in hlo.splitlines():
        target = re.search(r'custom_call_target="([^"]+)"', line)
        if target and ("conv" in target.group(1).lower() or "cudnn" in target.group(1).lower()
                       or "gemm" in target.group(1).lower() or "matmul" in target.group(1).lower()):
            kind = target.group(1)
        elif re.search(r"=\s*\S+\s+convolution\(", line):
            kind = "convolution (XLA op)"
        elif "kind=kCustom" in line and "__cudnn$fusion" in line:
            kind = "cuDNN fusion"
        else:
            continue
        fg = re.search(r"feature_group_count=(\d+)", line)
        bg = re.search(r"batch_group_count=(\d+)", line)
        kinds[(kind, int(fg.group(1)) if fg else 1, int(bg.group(1)) if bg else 1)] += 1
    if not kinds:
        return ["no convolution, cuDNN or GEMM ops found in the optimized HLO"]
    out = []
    for (kind, fg, bg), n in sorted(kinds.items()):
        out.append(f"  {n:4d} x {kind}" + (f", feature_group_count={fg}" if fg > 1 else "")
                   + (f", batch_group_count={bg}" if bg > 1 else ""))
    return out


def flops(compiled) -> float | None:
    try:
        cost = compiled.cost_analysis()
        cost = cost[0] if isinstance(cost, (list, tuple)) else cost
        return float(cost.get("flops", 0.0)) or None
    except Exception:  # best effort across backends and versions
        return None


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("logdir", help="a folder holding a trace (searched recursively), as jax.profiler.trace wrote it")
    p.add_argument("--top", type=int, default=15, help="kernels listed")
    p.add_argument("--out", help="also write the summary here")
    args = p.parse_args()
    text = "".join(line + "\n" for line in summarise_trace(Path(args.logdir), args.top))
    print(text, end="")
    if args.out:
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
