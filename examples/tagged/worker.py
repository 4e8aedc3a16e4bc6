#!/usr/bin/env python3
"""A `protocol = "tagged"` worker: it works on many messages at once and answers
each as soon as it is done, in any order.

orchd writes "ID message" lines; the worker answers "ID reply", copying the ID it
got (an opaque token: never parse it, never invent one). orchd matches replies by
ID, so the clients still get their replies in the order they sent the messages.
Here the "work" is an upper-casing that takes a random 0-50 ms, so replies often
come back out of order. Logs go to stderr.
"""

import asyncio
import os
import random
import sys

# orchd's messages are at most 1 MiB; leave room for the ID.
LINE_LIMIT = 2 * 1024 * 1024
MAX_DELAY = float(os.environ.get("MAX_DELAY", "0.05"))


async def handle(tag: bytes, message: bytes) -> None:
    await asyncio.sleep(random.uniform(0, MAX_DELAY))
    sys.stdout.buffer.write(tag + b" " + message.upper() + b"\n")
    sys.stdout.buffer.flush()


async def main() -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=LINE_LIMIT)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    tasks = set()
    while line := await reader.readline():
        tag, sep, message = line.rstrip(b"\n").partition(b" ")
        if not sep:
            print(f"not an 'ID message' line: {line[:40]!r}", file=sys.stderr)
            continue
        task = asyncio.create_task(handle(tag, message))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    # stdin closed: finish what was read, then exit.
    await asyncio.gather(*tasks)


if __name__ == "__main__":
    asyncio.run(main())
