#!/usr/bin/env python3
"""A stateful worker for orchd's hash example: it remembers, in memory, what each user
sent it. Messages look like "USER TEXT"; the route hashes on USER (key = "^(\\S+)"), so
every message of one user reaches the same instance and the history is complete.
"""
import os
import sys

me = f"{os.environ.get('ORCHD_POOL', 'sessions')}[{os.environ.get('ORCHD_INSTANCE', '?')}]"
history = {}

for line in sys.stdin:
    user, _, text = line.rstrip("\n").partition(" ")
    seen = history.setdefault(user, [])
    seen.append(text)
    print(f"{user}: message {len(seen)} ({', '.join(seen)}) kept by {me}", flush=True)
