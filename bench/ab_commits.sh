#!/usr/bin/env bash
# The CPU trainer bench's bare loop at two commits, in ABBA order (A B B A A B B A), one process at a time:
# checks that a change to the loop did not slow the CPU path. Each commit runs from its own git worktree
# with this checkout's .venv; the per-pass JSON and a summary go to bench/results/<out>.json.
#   bash bench/ab_commits.sh OLD_COMMIT NEW_COMMIT [out-name]
set -euo pipefail
old=$1 new=$2 name=${3:-cpu_loop_ab}
repo=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d)
trap 'git -C "$repo" worktree remove --force "$work/old" >/dev/null 2>&1; git -C "$repo" worktree remove --force "$work/new" >/dev/null 2>&1; rm -rf "$work"' EXIT
for side in old new; do
  git -C "$repo" worktree add -q --detach "$work/$side" "${!side}"
  ln -s "$repo/.venv" "$work/$side/.venv"
done
i=0
for side in old new new old old new new old; do
  i=$((i + 1))
  (cd "$work/$side" && RAY_USAGE_STATS_ENABLED=0 "$repo/.venv/bin/python" -m bench.trainer_bench --modes bare \
     --out "$work/$side-$i.json" > "$work/$side-$i.log" 2>&1)
  echo "pass $i ($side) done"
done
"$repo/.venv/bin/python" - "$work" "$old" "$new" "$repo/bench/results/$name.json" <<'PY'
import glob, json, statistics, sys
work, old, new, out = sys.argv[1:]
passes = []
for f in sorted(glob.glob(f"{work}/*-*.json"), key=lambda p: int(p.rsplit("-", 1)[1].split(".")[0])):
    side = f.rsplit("/", 1)[1].split("-")[0]
    passes.append({"side": side, "commit": old if side == "old" else new,
                   "ms_per_step": json.load(open(f))["runs"][0]["ms_per_step"]})
pairs = [passes[i:i + 2] for i in range(0, len(passes), 2)]
ratios = [round(next(p["ms_per_step"] for p in pair if p["side"] == "new")
                / next(p["ms_per_step"] for p in pair if p["side"] == "old"), 4) for pair in pairs]
result = {"command": f"bash bench/ab_commits.sh {old} {new}", "passes": passes,
          "new_over_old_ms_per_step_per_pair": ratios, "median_ratio": statistics.median(ratios),
          "median_ms_per_step": {s: statistics.median(p["ms_per_step"] for p in passes if p["side"] == s)
                                 for s in ("old", "new")}}
open(out, "w").write(json.dumps(result, indent=2))
print(json.dumps(result))
PY
