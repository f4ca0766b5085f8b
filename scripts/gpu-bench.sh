#!/usr/bin/env bash
# Runs the benchmark (examples/bench) on a hardware GPU and writes a
# BENCHMARKS.md section for it: the adapter, its driver, the date, and each
# figure beside that adapter's FP32 peak (as a share of its FLOP/s; the
# memory bandwidth is printed beside, for the memory-bound streaming modes).
#
#   bash scripts/gpu-bench.sh [--adapter NAME] [--peak-gflops X] [--peak-gbps Y]
#                             [--out FILE] [--quick] [--allow-software]
#
# --adapter        a substring of the adapter's name (default: the first
#                  discrete, then integrated GPU that `saobp info` lists)
# --peak-gflops    the adapter's FP32 peak in GFLOP/s, and
# --peak-gbps      its memory bandwidth in GB/s (default: from the table
#                  below when the adapter's name matches; otherwise the
#                  section leaves the "of peak" columns out and says so)
# --out            where the section goes (default: appended to BENCHMARKS.md)
# --quick          smaller sizes, for a first look (minutes, not tens)
# --allow-software let a CPU adapter (lavapipe, llvmpipe) run, to test this
#                  script on a machine without a GPU
#
# The bench's raw JSON and Markdown are kept in the build folder, as
# target/gpu-bench/<date>.json and .md (not committed).
set -euo pipefail
cd "$(dirname "$0")/.."

adapter=""
peak_gflops=""
peak_gbps=""
out="BENCHMARKS.md"
quick=0
allow_software=0
while [ $# -gt 0 ]; do
    case "$1" in
    --adapter) adapter="$2"; shift 2 ;;
    --peak-gflops) peak_gflops="$2"; shift 2 ;;
    --peak-gbps) peak_gbps="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    --quick) quick=1; shift ;;
    --allow-software) allow_software=1; shift ;;
    -h | --help) sed -n '2,22p' "$0"; exit 0 ;;
    *) echo "error: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done

cargo build --release --quiet --bin saobp --example bench
target=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
saobp="$target/release/saobp"
bench="$target/release/examples/bench"

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$saobp" info --json "$tmp/info.json" >/dev/null
# The adapter to run on: the named one, or the first hardware GPU.
python3 - "$tmp/info.json" "$adapter" "$allow_software" >"$tmp/pick" <<'PY'
import json, sys
info = json.load(open(sys.argv[1]))
want, allow = sys.argv[2].lower(), sys.argv[3] == "1"
adapters = info["adapters"]
def kind(a):
    return str(a.get("device_type", "")).lower()
if want:
    pick = [a for a in adapters if want in a["name"].lower()]
else:
    order = {"discretegpu": 0, "integratedgpu": 1, "virtualgpu": 2}
    # Vulkan first where a GPU has several backends: the bench's main target.
    rank = lambda a: (order[kind(a)], a["backend"].lower() != "vulkan")
    pick = sorted((a for a in adapters if kind(a) in order), key=rank)
    if not pick and allow:
        pick = adapters
if not pick:
    names = "; ".join(f'{a["name"]} ({a.get("device_type")})' for a in adapters) or "none"
    sys.exit(f"error: no {'adapter matching ' + repr(want) if want else 'hardware GPU'} among: {names}")
a = pick[0]
if kind(a) == "cpu" and not allow:
    sys.exit(f"error: {a['name']} is a CPU adapter; pass --allow-software to run on it anyway")
# Name and backend on lines of their own: names have spaces.
print(a["name"])
print(a["backend"].lower())
PY
{ read -r name; read -r backend; } <"$tmp/pick"
echo "adapter: $name ($backend)"

if [ "$quick" = 1 ]; then
    sizes=512,1024,2048
    mm=512,1024,2048
    long=16384
    small=8
else
    sizes=1024,2048,4096,8192
    mm=1024,2048,4096,8192
    long=65536
    small=64
fi
date=$(date -u +%Y-%m-%d)
mkdir -p "$target/gpu-bench"
raw="$target/gpu-bench/$date"
SAOBP_BACKEND="$backend" SAOBP_ADAPTER="$name" "$bench" --sizes "$sizes" --matmul-sizes "$mm" --max-materialized 4096 \
    --long "$long" --small-batch "$small" --memory "$small" --repeat 3 \
    --json "$raw.json" --markdown "$raw.md" | tee "$tmp/bench.log"

python3 - "$raw.json" "$raw.md" "$tmp/bench.log" "$out" "$date" "$peak_gflops" "$peak_gbps" <<'PY'
import json, re, sys
raw, md_path, log_path, out, date, peak_f, peak_b = sys.argv[1:8]
r = json.load(open(raw))
adapter = r["adapter"]
# FP32 peak (GFLOP/s, no tensor cores) and memory bandwidth (GB/s) from the
# vendors' data sheets; the first name that occurs in the adapter's wins.
PEAKS = [
    ("H200", 67000, 4800), ("H100 PCIe", 51200, 2000), ("H100", 67000, 3350),
    ("A100", 19500, 2039), ("L40S", 91600, 864), ("RTX 4090", 82600, 1008),
    ("RTX 4080", 48700, 717), ("RTX 3090", 35600, 936), ("RTX 3080", 29800, 760),
]
src_f = src_b = "given on the command line"
for key, f, b in PEAKS:
    if key.lower() in adapter.lower():
        if not peak_f:
            peak_f, src_f = f, f"the data sheet of the {key}"
        if not peak_b:
            peak_b, src_b = b, f"the data sheet of the {key}"
        break
peak_f = float(peak_f) if peak_f else None
peak_b = float(peak_b) if peak_b else None

def of_peak(gflops):
    return f" ({100 * gflops / peak_f:.1f} % of peak)" if peak_f and gflops else ""

lines = [f"\n## {adapter.split(' [')[0]} ({date})\n",
         f"`bash scripts/gpu-bench.sh`, {date}, adapter: {adapter}. "]
if peak_f:
    lines.append(f"Peak FP32 {peak_f:,.0f} GFLOP/s ({src_f}). ")
else:
    lines.append("No FP32 peak known for this adapter (pass --peak-gflops): the \"of peak\" figures are left out. ")
if peak_b:
    lines.append(f"Memory bandwidth {peak_b:,.0f} GB/s ({src_b}).")
lines.append("\n")
lines.append("\n| N | mode | time | GFLOP/s |\n|---|---|---|---|\n")
for row in r["attention"]:
    for mode in ["plain", "flash", "fused", "streaming", "materialized"]:
        c = row[mode]
        if "ms" in c:
            lines.append(f"| {row['n']} | {mode} | {c['ms']:.2f} ms | {c['gflops']:.1f}{of_peak(c['gflops'])} |\n")
lines.append("\n| matmul size | best variant | GFLOP/s |\n|---|---|---|\n")
for row in r["matmul"]:
    best = max((v for v in row["variants"] if "gflops" in v["timing"]), key=lambda v: v["timing"]["gflops"], default=None)
    if best:
        g = best["timing"]["gflops"]
        lines.append(f"| {row['n']}³ | {best['variant']} | {g:.1f}{of_peak(g)} |\n")
if r["training"]:
    lines.append("\n| training preset | T | batch | λ | step | dispatches | product GFLOP/s |\n|---|---|---|---|---|---|---|\n")
    for t in r["training"]:
        step = t["forward_s"] + t["backward_s"] + t["optimizer_s"]
        g = t["product_flops"] / 1e9 / max(step, 1e-12)
        lines.append(f"| {t['preset']} | {t['t']} | {t['batch']} | {'> 0' if t['lambda'] else '0'} | {step * 1e3:.1f} ms | {t['dispatches']} | {g:.1f}{of_peak(g)} |\n")
long = r.get("long_sequence")
if long and "seconds" in long:
    used = long.get("allocated_bytes")
    mem = f", {used / 2**20:.1f} MiB allocated by the call" if used else ""
    lines.append(f"\nStreaming SAOBP, one head of N = {long['n']}: {long['seconds']:.2f} s{mem}.\n")
for l in open(log_path):
    if "GPU memory held after one step" in l:
        lines.append(f"\n{l.strip()}.\n")
lines.append("\nThe bench's own tables and raw figures: `target/gpu-bench/` of the machine that ran it.\n")
with open(out, "a") as f:
    f.write("".join(lines))
print(f"wrote the section for {adapter} to {out}")
PY
