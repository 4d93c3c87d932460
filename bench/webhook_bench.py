"""Benchmark the deploy webhook on loopback: response latency and push-to-deploy-start delay.

Starts gunicorn (``webhook_app:app``, 2 workers) on 127.0.0.1 with a throw-away state dir and
a bare git repo; deploys are a no-op command that only notes when it started.

1. latency: --requests signed Gitea tag pushes (new connection each, like a forge), one at a
   time, while the receiver keeps deploying in the background; p50/p90/p99/max of the 202s.
2. delay: --deploys pushes, each waited out: POST sent -> deploy command started (includes
   the git fetch and the checkout of a clean work dir), and queued -> claimed from the records.

    python bench/webhook_bench.py [--requests 1000] [--deploys 20] [--workers 2]
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench._common import free_port, http_answers, percentile, wait_serving  # noqa: E402
from bus.timestamps import parse_timestamp  # noqa: E402

SECRET, TOKEN = "bench-webhook-secret-0123456789", "bench-read-token-0123456789"
GIT = ["git", "-c", "user.name=bench", "-c", "user.email=bench@example.org"]


def signed(sha: str) -> tuple[bytes, dict[str, str]]:
    """A Gitea push of PROD at ``sha`` with Gitea's headers."""
    body = json.dumps({"ref": "refs/tags/PROD", "before": "0" * 40, "after": sha,
                       "repository": {"full_name": "ops/fleet"},
                       "pusher": {"login": "bench"}}).encode()
    return body, {"Content-Type": "application/json", "X-Gitea-Event": "push",
                  "X-Gitea-Delivery": str(uuid.uuid4()),
                  "X-Gitea-Signature": hmac.new(SECRET.encode(), body,
                                                hashlib.sha256).hexdigest()}


def stamp(text: str) -> float:
    """Seconds since the epoch of a stored ISO time."""
    stamped = parse_timestamp(text)
    assert stamped is not None, text
    return stamped.timestamp()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--deploys", type=int, default=20)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="webhook-bench-"))
    bare, work, starts = tmp / "fleet.git", tmp / "work", tmp / "starts"
    subprocess.run([*GIT, "init", "-q", "--bare", str(bare)], check=True)
    subprocess.run([*GIT, "clone", "-q", str(bare), str(work)], check=True,
                   stderr=subprocess.DEVNULL)
    subprocess.run([*GIT, "commit", "-q", "--allow-empty", "-m", "bench"], cwd=work, check=True)
    subprocess.run([*GIT, "push", "-q", "origin", "HEAD:refs/heads/main", "HEAD:refs/tags/PROD"],
                   cwd=work, check=True)
    sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=work, capture_output=True,
                         text=True, check=True).stdout.strip()
    port = free_port()
    env = {**os.environ, "FLEET_WEBHOOK_SECRET": SECRET, "FLEET_READ_TOKEN": TOKEN,
           "FLEET_REPO_URL": f"file://{bare}", "FLEET_STATE_DIR": str(tmp / "state"),
           "FLEET_HEALTH_CHECK": "off",
           "FLEET_DEPLOY_COMMAND": f"sh -c 'date +%s.%N >> {starts}'"}
    server = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "-c", "python:fleet.webhook.serving",
         "-w", str(args.workers), "-b", f"127.0.0.1:{port}", "webhook_app:app"],
        cwd=REPO, env=env, start_new_session=True, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_serving(server, lambda: http_answers(f"{url}/openapi.json", 5), "the receiver",
                     timeout=30)
        latencies = []
        for _ in range(args.requests):
            body, headers = signed(sha)
            began = time.perf_counter()
            response = requests.post(f"{url}/hooks/gitea", data=body, headers=headers, timeout=10)
            latencies.append((time.perf_counter() - began) * 1000)
            assert response.status_code == 202, response.text
        print(f"webhook latency over {args.requests} signed pushes ({args.workers} workers, "
              f"deploying meanwhile): p50 {percentile(latencies, 0.5):.1f} ms, "
              f"p90 {percentile(latencies, 0.9):.1f} ms, p99 {percentile(latencies, 0.99):.1f} ms,"
              f" max {max(latencies):.1f} ms")
        auth = {"Authorization": f"Bearer {TOKEN}"}
        while requests.get(f"{url}/healthz", headers=auth, timeout=10).json()["running"] or \
                requests.get(f"{url}/healthz", headers=auth, timeout=10).json()["queued"]:
            time.sleep(0.1)
        delays, claims = [], []
        for _ in range(args.deploys):
            seen = len(starts.read_text().splitlines()) if starts.exists() else 0
            body, headers = signed(sha)
            sent = time.time()
            run_id = requests.post(f"{url}/hooks/gitea", data=body, headers=headers,
                                   timeout=10).json()["run_id"]
            give_up = time.monotonic() + 60
            while not starts.exists() or len(starts.read_text().splitlines()) <= seen:
                if time.monotonic() > give_up:
                    run = requests.get(f"{url}/runs/{run_id}", headers=auth, timeout=10)
                    raise SystemExit(f"run {run_id} started no deploy within 60 s: {run.text}")
                time.sleep(0.005)
            delays.append((float(starts.read_text().splitlines()[-1]) - sent) * 1000)
            run = requests.get(f"{url}/runs/{run_id}", headers=auth, timeout=10).json()
            claims.append((stamp(run["started_at"]) - stamp(run["queued_at"])) * 1000)
            while requests.get(f"{url}/runs/{run_id}", headers=auth,
                               timeout=10).json()["status"] == "running":
                time.sleep(0.01)
        print(f"push -> deploy command started over {args.deploys} pushes (fetch + clean "
              f"checkout included): median {statistics.median(delays):.0f} ms, "
              f"max {max(delays):.0f} ms; queued -> claimed: median "
              f"{statistics.median(claims):.1f} ms, max {max(claims):.1f} ms")
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
        subprocess.run(["rm", "-rf", str(tmp)], check=False)


if __name__ == "__main__":
    main()
