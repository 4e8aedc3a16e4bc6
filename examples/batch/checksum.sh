#!/bin/sh
# A batch worker: for each line (a job), answer "<sha256 of the line>  <line>".
# Any program that reads lines and writes one line per line read is a worker.
while IFS= read -r job; do
    sum=$(printf '%s' "$job" | sha256sum)
    printf '%s  %s\n' "${sum%% *}" "$job"
done
