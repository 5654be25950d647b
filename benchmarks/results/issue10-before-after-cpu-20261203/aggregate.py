"""Old (pre-#10) vs new gmk peers over alternated rounds: min over rounds of each peer's median, and the
gmk peer's time relative to the eager reference of the same run (load-normalised)."""
import glob, json, statistics, sys
from pathlib import Path
HERE = Path(__file__).parent
def load(tree):
    runs = []
    for f in sorted(glob.glob(str(HERE / f"{tree}-round*.json"))):
        d = json.load(open(f))
        runs.append({(c["name"], r["peer"]): r["median_ms"] for c in d["cases"] for r in c["results"] if r["status"] == "ok"})
    return runs
old, new = load("before-cbf9a30"), load("after-3e94d94")
keys = sorted(set(old[0]) & set(new[0]))
print(f"rounds: old {len(old)}, new {len(new)}")
print("| case | peer | old min-median ms | new min-median ms | new/old | new/old relative to eager (median over rounds) |")
print("|---|---|---:|---:|---:|---:|")
for case, peer in keys:
    if not peer.startswith("gmk"):
        continue
    o = min(r[(case, peer)] for r in old if (case, peer) in r)
    n = min(r[(case, peer)] for r in new if (case, peer) in r)
    rel = lambda runs: statistics.median(r[(case, peer)] / r[(case, "reference")] for r in runs if (case, peer) in r and (case, "reference") in r)
    print(f"| {case} | {peer} | {o:.4g} | {n:.4g} | {n/o:.3f} | {rel(new)/rel(old):.3f} |")
