#!/usr/bin/env python3
"""A minimal orchd client: send stdin's lines (or the arguments) and print the replies.

    python3 examples/client.py 127.0.0.1:7070 hello world
    seq 1 5 | python3 examples/client.py 127.0.0.1:7070
    python3 examples/client.py unix:/path/to/socket hello

Messages are written while replies are read (a second thread), so any number of lines
can be sent without deadlock. Exits 1 if a reply starts with the error prefix "ERR ".
"""
import socket
import sys
import threading


def connect(address):
    if address.startswith("unix:"):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(address[len("unix:"):])
        return s
    host, _, port = address.rpartition(":")
    return socket.create_connection((host.strip("[]") or "127.0.0.1", int(port)))


def main():
    if len(sys.argv) < 2 or sys.argv[1] in ("-h", "--help"):
        print(__doc__.strip(), file=sys.stderr)
        return 2
    sock = connect(sys.argv[1])
    lines = sys.argv[2:]

    def send():
        if lines:
            for line in lines:
                sock.sendall(line.encode() + b"\n")
        else:
            for line in sys.stdin.buffer:
                sock.sendall(line)
        sock.shutdown(socket.SHUT_WR)  # EOF: orchd answers what it has, then closes

    threading.Thread(target=send, daemon=True).start()
    errors = 0
    out = sys.stdout.buffer
    for reply in sock.makefile("rb"):
        errors += reply.startswith(b"ERR ")
        out.write(reply)
        out.flush()
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
