"""Bus benchmark on loopback: durable receive throughput and end-to-end delivery latency.

Starts two real gateways (``fleet gateway serve``, gunicorn) for a temp registry on
127.0.0.1, then measures:

1. receive throughput: signed messages POSTed to one gateway's ``/message`` by
   ``--clients`` threads, each answered only after its SQLite (WAL, synchronous=FULL) commit;
2. end-to-end latency: messages queued in the sender's outbox (``POST /outbox``) at
   ``--rate`` per second, from the enqueue timestamp to the recipient's inbox commit;
3. end-to-end throughput: a burst queued in the outbox, until all are in the inbox;
4. backlog drain: messages queued while the recipient is down, then the recipient started:
   the delivery worker sends them in batches (``/messages/batch``), one commit per batch.

The load generator is lean so that the figures measure the gateway, not the client: every
request is built and signed before the clock starts, and one thread drives ``--clients``
keep-alive sockets with raw HTTP/1.1 (one request in flight per socket). Each figure comes
with the load average (the machine may be shared) and the gateway's CPU per message, which
does not depend on the load.

Run: ``python bench/bus_bench.py [--messages 5000] [--clients 64] [--rounds 3] [--rate 200]``.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import selectors
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench._common import free_port, http_answers, keys_env, percentile, wait_serving  # noqa: E402
from bus.keys import new_private_key, signing_key  # noqa: E402
from bus.signing import sign  # noqa: E402

KEYS = {"sender": new_private_key(), "receiver": new_private_key()}  # Ed25519, RFC 9421
SENDER = signing_key("sender", KEYS["sender"])


def start_gateway(name: str, registry: Path, folder: Path, port: int,
                  workers: int) -> subprocess.Popen[bytes]:
    env = {**os.environ, **keys_env(KEYS, name),
           "FLEET_BUS_RETRY_MAX": "0.5",  # drain: no long backoff
           "FLEET_BUS_INBOX_QUOTA": "100000000"}  # nothing acknowledges: no quota here
    command = [sys.executable, "-c", "from fleet.cli import main; main()", "--registry",
               str(registry), "gateway", "serve", "--agent", name, "--port", str(port),
               "--state-dir", str(folder / name), "--workers", str(workers)]
    log = (folder / f"{name}.log").open("wb")
    process = subprocess.Popen(command, env=env, stdout=log, stderr=log,
                               start_new_session=True)
    log.close()
    wait_serving(process, lambda: http_answers(f"http://127.0.0.1:{port}/openapi.json", 1),
                 name, folder / f"{name}.log")
    return process


def post_signed(connection: http.client.HTTPConnection, path: str, data: dict[str, object],
                expect: int) -> None:
    """POST ``data`` signed as the sender on a keep-alive connection."""
    body = json.dumps(data).encode()
    headers = sign(SENDER, "POST", f"http://{connection.host}:{connection.port}{path}", body)
    headers["Content-Type"] = "application/json"
    connection.request("POST", path, body, headers)
    response = connection.getresponse()
    answer = response.read()
    assert response.status == expect, answer


def signed_request(port: int, path: str, data: dict[str, object]) -> bytes:
    """A complete HTTP/1.1 request POSTing ``data`` signed as the sender (keep-alive)."""
    body = json.dumps(data, separators=(",", ":")).encode()
    headers = {"Host": f"127.0.0.1:{port}", "Content-Type": "application/json",
               "Content-Length": str(len(body)),
               **sign(SENDER, "POST", f"http://127.0.0.1:{port}{path}", body)}
    head = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
    return f"POST {path} HTTP/1.1\r\n{head}\r\n".encode("latin-1") + body


def blast(port: int, requests_: list[bytes], clients: int, expect: int) -> float:
    """Send pre-built ``requests_`` over ``clients`` keep-alive sockets driven by one selector
    thread, one request in flight per socket; seconds until every answer is in."""
    selector = selectors.DefaultSelector()
    todo = list(reversed(requests_))
    sockets = [socket.create_connection(("127.0.0.1", port))
               for _ in range(min(clients, len(todo)))]
    for sock in sockets:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        selector.register(sock, selectors.EVENT_READ, (sock, bytearray()))
    started = time.perf_counter()
    for sock in sockets:
        sock.sendall(todo.pop())
    answered = 0
    try:
        while answered < len(requests_):
            for key, _ in selector.select(10):
                sock, buffer = key.data
                chunk = sock.recv(65536)
                if not chunk:
                    raise SystemExit("the gateway closed a keep-alive connection")
                buffer += chunk
                while (status := _take_response(buffer)) is not None:
                    if status != expect:
                        raise SystemExit(f"HTTP {status}, expected {expect}")
                    answered += 1
                    if todo:
                        sock.sendall(todo.pop())
    finally:
        for sock in sockets:
            sock.close()
        selector.close()
    return time.perf_counter() - started


def _take_response(buffer: bytearray) -> int | None:
    """Remove one complete response (``Content-Length`` framed) from ``buffer``; its status."""
    end = buffer.find(b"\r\n\r\n")
    if end < 0:
        return None
    head = bytes(buffer[:end]).decode("latin-1").split("\r\n")
    length = next((int(line.split(":", 1)[1]) for line in head[1:]
                   if line.lower().startswith("content-length:")), 0)
    if len(buffer) < end + 4 + length:
        return None
    del buffer[:end + 4 + length]
    return int(head[0].split(" ", 2)[1])


def receive_throughput(port: int, count: int, clients: int, prefix: str) -> tuple[float, float]:
    """Messages per second stored by the receiver (each one signed ``POST /message``,
    answered 201 after its commit) and the load generator's CPU ms per message."""
    requests_ = [signed_request(port, "/message", {
        "id": f"{prefix}-{n}", "from": "sender", "to": "receiver", "type": "alert",
        "payload": {"n": n}, "timestamp": datetime.now(UTC).isoformat()})
        for n in range(count)]
    cpu = time.process_time()
    elapsed = blast(port, requests_, clients, 201)
    return count / elapsed, (time.process_time() - cpu) * 1000 / count


def inbox_latencies(store: Path, prefix: str) -> list[float]:
    """Seconds from each message's enqueue timestamp to its inbox commit."""
    db = sqlite3.connect(store)
    try:
        found = db.execute("SELECT timestamp, received_at FROM inbox WHERE id LIKE ?",
                           (f"{prefix}%",)).fetchall()
    finally:
        db.close()
    return [received - datetime.fromisoformat(stamp).timestamp() for stamp, received in found]


def wait_inbox(store: Path, prefix: str, count: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while len(inbox_latencies(store, prefix)) < count:
        if time.monotonic() > deadline:
            raise SystemExit(f"only {len(inbox_latencies(store, prefix))} of {count} arrived")
        time.sleep(0.05)


def end_to_end(port: int, store: Path, count: int, rate: float) -> list[float]:
    """Latencies of ``count`` messages queued at ``rate`` per second."""
    interval, start = 1.0 / rate, time.perf_counter()
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        for n in range(count):
            time.sleep(max(0.0, start + n * interval - time.perf_counter()))
            post_signed(connection, "/outbox", {"to": "receiver", "type": "alert",
                                                "payload": {"n": n}, "id": f"lat-{n}"}, 202)
    finally:
        connection.close()
    wait_inbox(store, "lat-", count)
    return sorted(inbox_latencies(store, "lat-"))


def outbox_requests(port: int, prefix: str, count: int) -> list[bytes]:
    """Signed ``POST /outbox`` requests queueing ``count`` alerts for the receiver."""
    return [signed_request(port, "/outbox", {"to": "receiver", "type": "alert",
                                             "payload": {"n": n}, "id": f"{prefix}-{n}"})
            for n in range(count)]


def burst(port: int, store: Path, count: int, clients: int) -> float:
    """Messages per second from outbox enqueue (``clients`` sockets) to all in the inbox."""
    requests_ = outbox_requests(port, "burst", count)
    started = time.perf_counter()
    blast(port, requests_, clients, 202)
    wait_inbox(store, "burst-", count)
    return count / (time.perf_counter() - started)


def group_cpu_seconds(group: int) -> float:
    """CPU seconds (user + system) used so far by the processes of process group ``group``."""
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == group:
            total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def queue_backlog(port: int, count: int, clients: int) -> None:
    """Queue ``count`` messages in the sender's outbox (the recipient is down)."""
    blast(port, outbox_requests(port, "drain", count), clients, 202)


def load() -> str:
    """The 1-minute load average, to read each figure against."""
    return f"load {os.getloadavg()[0]:.1f}"


def measure_receive(port: int, receiver: int, args: argparse.Namespace) -> None:
    """Receive throughput over ``args.rounds`` rounds: each round's figures, then medians."""
    rates: list[float] = []
    cpus: list[float] = []
    for number in range(args.rounds):
        cpu = group_cpu_seconds(receiver)
        rate, client_ms = receive_throughput(port, args.messages, args.clients, f"rx{number}")
        cpu_ms = (group_cpu_seconds(receiver) - cpu) * 1000 / args.messages
        rates.append(rate)
        cpus.append(cpu_ms)
        print(f"  round {number + 1}: {rate:,.0f} msg/s, gateway CPU {cpu_ms:.2f} ms/msg, "
              f"load generator CPU {client_ms:.3f} ms/msg, {load()}")
    cpu_ms = statistics.median(cpus)
    print(f"receive throughput: {statistics.median(rates):,.0f} msg/s durable into one gateway "
          f"(median of {args.rounds} x {args.messages} msgs, {args.clients} clients); gateway "
          f"CPU {cpu_ms:.2f} ms/msg (= {1000 / cpu_ms:,.0f} msg/s per core), {load()}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=5000, help="messages per phase/round")
    parser.add_argument("--clients", type=int, default=64, help="concurrent connections")
    parser.add_argument("--rounds", type=int, default=3, help="receive throughput rounds")
    parser.add_argument("--rate", type=float, default=200, help="latency phase: msgs/s")
    parser.add_argument("--latency-messages", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=2, help="gunicorn workers")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="bus-bench-"))
    ports = {name: free_port() for name in KEYS}
    registry = folder / "registry.yaml"
    registry.write_text("wizards:\n" + "".join(
        f"  {name}:\n    host: 127.0.0.1\n    role: worker\n    model: bench/m\n"
        f"    gateway_port: {port}\n" for name, port in ports.items()))
    processes = [start_gateway(name, registry, folder, port, args.workers)
                 for name, port in ports.items()]
    store = folder / "receiver" / "bus.sqlite3"
    try:
        print(f"loopback, {os.cpu_count()} cores, gunicorn {args.workers} gevent workers "
              f"per gateway (fleet.core.serving), SQLite WAL synchronous=FULL, {load()}")
        measure_receive(ports["receiver"], processes[1].pid, args)
        lat = end_to_end(ports["sender"], store, args.latency_messages, args.rate)
        print(f"end-to-end latency outbox -> inbox at {args.rate:.0f} msg/s "
              f"({len(lat)} msgs): p50 {percentile(lat, 0.5) * 1000:.1f} ms, "
              f"p99 {percentile(lat, 0.99) * 1000:.1f} ms, max {lat[-1] * 1000:.1f} ms, "
              f"mean {statistics.mean(lat) * 1000:.1f} ms, {load()}")
        e2e = burst(ports["sender"], store, args.messages, args.clients)
        print(f"end-to-end throughput (burst into outbox until all in inbox): {e2e:,.0f} msg/s, "
              f"{load()}")
        os.killpg(processes[1].pid, signal.SIGTERM)
        processes[1].wait(20)
        drain_count = args.messages * 5
        queue_backlog(ports["sender"], drain_count, args.clients)
        started = time.perf_counter()
        processes[1] = start_gateway("receiver", registry, folder, ports["receiver"],
                                     args.workers)
        wait_inbox(store, "drain-", drain_count)
        drained = drain_count / (time.perf_counter() - started)
        print(f"backlog drain into one gateway (recipient down while {drain_count} were "
              f"queued, then started; includes its start-up): {drained:,.0f} msg/s, {load()}")
    finally:
        for process in processes:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
                process.wait(20)
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
