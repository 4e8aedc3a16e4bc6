#!/usr/bin/env python3
"""A task worker that crashes now and then, for orchd's fault-tolerance example.

Each line on stdin is a task; the answer is one line on stdout. Before answering, the
worker dies (exit status 1) with probability CRASH_RATE (default 0.1). orchd restarts
it with backoff and delivers the unanswered task again (up to the route's `retries`),
so the client still gets one answer per task.
"""
import os
import random
import sys

crash_rate = float(os.environ.get("CRASH_RATE", "0.1"))
me = f"{os.environ.get('ORCHD_POOL', 'tasks')}[{os.environ.get('ORCHD_INSTANCE', '?')}]"

for line in sys.stdin:
    task = line.rstrip("\n")
    if random.random() < crash_rate:
        print(f"crashing while working on {task!r}", file=sys.stderr, flush=True)
        os._exit(1)
    words = len(task.split())
    print(f"done {task!r}: {words} word(s), by {me} pid {os.getpid()}", flush=True)
