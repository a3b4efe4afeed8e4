"""A job client of our own that speaks valve-infra's v1 protocol as ``valve-infra.md`` §4.3/§4.5 describe it.

It is not our ``valve-console job run`` (which follows the job over SSE): it listens on a TCP port, submits
the job as valve-infra's multipart form with ``callback: {port}``, waits 5 s for the gateway to connect
back, then reads framed messages (4-byte big-endian length + JSON ``ctrl`` / ``job_io`` / ``session_end``)
until ``session_end`` and exits with the JobStatus number. Console bytes go to stdout, control messages
to stderr. Options make it misbehave for the bad-input tests.

    python tests/compat/v1client.py URL JOB.yml [-i MAC] [-t TAG]... [-j ID] [--tags-null] [--type TEXT]
        [--garbage | --oversized | --bad-base85] [--callback-port N] [--no-accept]
"""

from __future__ import annotations

import argparse
import base64
import json
import select
import socket
import struct
import sys
import time

STATUS = {"PASS": 0, "WARN": 1, "COMPLETE": 2, "FAIL": 3, "INCOMPLETE": 4, "UNKNOWN": 5, "SETUP_FAIL": 6}


def recv_exactly(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise EOFError(f"the stream ended after {len(data)} of {n} bytes")
        data += chunk
    return data


def send_frame(sock: socket.socket, msg_type: str, payload: object) -> None:
    body = json.dumps({"msg_type": msg_type, "date": "2022-09-12T10:00:00", "payload": payload}).encode()
    sock.sendall(struct.pack("!I", len(body)) + body)


def submit(url: str, job: str, meta: dict) -> tuple[int, dict]:
    import httpx

    files = {
        "metadata": ("metadata", json.dumps(meta), "application/json"),
        "job": ("job", job, "application/x-yaml"),
    }
    r = httpx.post(f"{url}/api/v1/jobs", files=files, timeout=30)
    try:
        return r.status_code, r.json()
    except ValueError:
        return r.status_code, {"text": r.text}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("url")
    p.add_argument("job")
    p.add_argument("-i", "--machine-id")
    p.add_argument("-t", "--tag", action="append", dest="tags")
    p.add_argument("-j", "--job-id")
    p.add_argument("--tags-null", action="store_true", help='send "tags": null, as executorctl -i does')
    p.add_argument("--type", help="send these keystrokes (job_io) once the console shows its command line")
    p.add_argument("--garbage", action="store_true", help="send bytes that are not a frame once connected")
    p.add_argument("--oversized", action="store_true", help="announce a 2 GiB frame once connected")
    p.add_argument("--bad-base85", action="store_true", help="send a job_io frame with bad base85")
    p.add_argument("--callback-port", type=int, help="name this port instead of our listener's")
    p.add_argument("--no-accept", action="store_true", help="never accept the gateway's connection")
    args = p.parse_args(argv)

    with open(args.job) as handle:
        job = handle.read()
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    meta: dict = {"version": 1, "job_id": args.job_id, "minio": {"credentials": {}, "groups": []},
                  "callback": {"port": args.callback_port or server.getsockname()[1]}}
    if args.machine_id or args.tags or args.tags_null:
        meta["target"] = {"id": args.machine_id, "tags": None if args.tags_null else args.tags}
    status, answer = submit(args.url.rstrip("/"), job, meta)
    print(f"v1client: HTTP {status} {json.dumps(answer)}", file=sys.stderr, flush=True)
    if status != 200:
        return STATUS["SETUP_FAIL"]
    if set(answer) != {"version", "error_msg"}:
        print(f"v1client: the answer has other keys than version and error_msg: {answer}", file=sys.stderr)
        return STATUS["UNKNOWN"]
    if args.no_accept:
        time.sleep(3600)
    server.settimeout(5)
    try:
        sock, _ = server.accept()
    except socket.timeout:
        print("v1client: the server failed to initiate a connection", file=sys.stderr)
        return STATUS["SETUP_FAIL"]
    sock.settimeout(None)
    print("v1client: connected", file=sys.stderr, flush=True)
    if args.garbage:
        sock.sendall(b"\x00\x00\x00\x05hello")
    if args.oversized:
        sock.sendall(struct.pack("!I", 0x7FFFFFFF) + b"{")
    if args.bad_base85:
        send_frame(sock, "job_io", "not base85 ~~~~ {{{{")
    typed = False
    console = b""
    while True:
        readable, _, _ = select.select([sock], [], [], 60)
        if not readable:
            continue
        try:
            (length,) = struct.unpack("!I", recv_exactly(sock, 4))
            msg = json.loads(recv_exactly(sock, length).decode())
        except EOFError as exc:
            print(f"v1client: {exc}", file=sys.stderr)
            return STATUS["INCOMPLETE"]
        kind, payload = msg["msg_type"], msg["payload"]
        if kind == "ctrl":
            sys.stderr.write(payload["msg"])
            sys.stderr.flush()
        elif kind == "job_io":
            data = base64.b85decode(payload)
            console += data
            sys.stdout.buffer.write(data)
            sys.stdout.flush()
            if args.type and not typed and b"Command line" in console:
                send_frame(sock, "job_io", base64.b85encode(args.type.encode()).decode())
                typed = True
        elif kind == "session_end":
            print(f"v1client: session_end {payload}", file=sys.stderr, flush=True)
            # the gateway half-closes: read to the end, then close
            rest = b""
            while chunk := sock.recv(4096):
                rest += chunk
            sock.close()
            if rest:
                print(f"v1client: {len(rest)} bytes after session_end", file=sys.stderr)
            return STATUS.get(payload.get("status"), STATUS["UNKNOWN"])


if __name__ == "__main__":
    sys.exit(main())
