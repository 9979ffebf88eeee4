#!/usr/bin/env bash
# `make test` on fresh clones of HEAD's commit (fixed when the script starts): N runs as they are, then one
# with a busy process pinned to core 0 for the whole run (a stand-in for a slower machine). Each clone builds
# its own .venv. Writes bench/results/test_repeat.json; the logs stay in the printed temp dir.
# Usage: bash bench/test_repeat.sh [N]   (N defaults to 3)
set -uo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
n=${1:-3}
commit=$(git -C "$repo" rev-parse HEAD)
work=$(mktemp -d /tmp/test-repeat.XXXXXX)
rows="$work/rows.jsonl"
echo "logs in $work"
# Beside each clone, as CI lays it: the shared folder (KubeRay schemas for the infra tests).
[ -d "$repo/../shared" ] && ln -s "$(cd "$repo/../shared" && pwd)" "$work/shared"

run_one() {  # label busy(0|1)
  local label=$1 busy=$2 dir="$work/$1" busy_pid="" start end rc
  git clone -q "$repo" "$dir" && git -C "$dir" checkout -q "$commit"
  if [ "$busy" = 1 ]; then
    taskset -c 0 sh -c 'while :; do :; done' &
    busy_pid=$!
  fi
  start=$(date +%s)
  (cd "$dir" && make test) >"$work/$label.log" 2>&1
  rc=$?
  end=$(date +%s)
  [ -n "$busy_pid" ] && kill "$busy_pid"
  python3 - "$label" "$busy" "$rc" "$((end - start))" "$work/$label.log" "$(git -C "$dir" rev-parse HEAD)" >>"$rows" <<'PY'
import json, re, sys
label, busy, rc, wall, log, commit = sys.argv[1:]
lines = [l.strip("= \n") for l in open(log, errors="replace") if re.search(r"\d+ (passed|failed)", l)]
print(json.dumps({"run": label, "commit": commit, "busy_process_on_core_0": busy == "1", "exit_code": int(rc),
                  "wall_s_with_venv": int(wall), "pytest_summary": lines[-1] if lines else None}))
PY
  tail -1 "$rows"
  rm -rf "$dir/.venv"
}

for i in $(seq 1 "$n"); do run_one "fresh-$i" 0; done
run_one "busy-core-0" 1
python3 - "$rows" "$repo/bench/results/test_repeat.json" <<'PY'
import datetime, json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
out = {"date": datetime.date.today().isoformat(), "command": "bash bench/test_repeat.sh", "runs": rows}
open(sys.argv[2], "w").write(json.dumps(out, indent=1) + "\n")
print(f"wrote {sys.argv[2]}")
PY
