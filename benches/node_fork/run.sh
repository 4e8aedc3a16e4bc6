#!/bin/sh
# The node protocol through orchd against the seeds' own fork() parent, same worker
# file (examples/node-fork/worker.js), same number of workers, same messages:
#
#   benches/node_fork/run.sh [N]        (WORKERS=4, ORCHD=target/release/orchd)
#
# orchd runs in batch mode (from = "stdin"): N lines in, N replies out, then it
# exits; the seed's parent forks the workers, send()s N messages and exits once each
# has its response. Both times include starting and stopping the workers. The
# replies are counted (orchd's on its stdout; the seed's parent counts its own, as
# the workers' console.log shares its stdout); the workers' console.log output is
# discarded in both (orchd's log is at RUST_LOG=warn). Prints the wall time of each
# and the ratio.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
n=${1:-100000}
workers=${WORKERS:-4}
orchd=${ORCHD:-$root/target/release/orchd}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

cat > "$tmp/pool.toml" <<TOML
[pool.node-fork]
command = ["node", "$root/examples/node-fork/worker.js"]
count = $workers
protocol = "node"

[[route]]
from = "stdin"
to = "node-fork"
TOML
awk -v n="$n" 'BEGIN { for (i = 0; i < n; i++) print "message " i }' > "$tmp/in"

now() { date +%s.%N; }

t0=$(now)
WORKERS=$workers node "$here/parent.js" "$n" 2>&1 >/dev/null | sed -n 's/^responses: //p' > "$tmp/seed.count"
t1=$(now)
RUST_LOG=warn "$orchd" --no-watch "$tmp/pool.toml" < "$tmp/in" 2>/dev/null | grep -c '^Processed message' > "$tmp/orchd.count"
t2=$(now)

seed_count=$(cat "$tmp/seed.count")
orchd_count=$(cat "$tmp/orchd.count")
[ "$seed_count" = "$n" ] || { echo "seed parent: $seed_count responses of $n" >&2; exit 1; }
[ "$orchd_count" = "$n" ] || { echo "orchd: $orchd_count replies of $n" >&2; exit 1; }
awk -v a="$t0" -v b="$t1" -v c="$t2" -v n="$n" -v w="$workers" 'BEGIN {
  seed = b - a; orchd = c - b
  printf "node fork(), %d messages, %d workers\n", n, w
  printf "  seed fork() parent: %.3f s (%.0f msg/s)\n", seed, n / seed
  printf "  orchd node protocol: %.3f s (%.0f msg/s)\n", orchd, n / orchd
  printf "  ratio (seed / orchd): %.2fx\n", seed / orchd
}'
