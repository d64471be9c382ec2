#!/usr/bin/env python3
"""Login timing benchmark: does a 401 reveal whether an email is registered?

Registers one user with BCRYPT_ROUNDS=10 (as if the cost had been raised since), restarts the
release binary with BCRYPT_ROUNDS=12 and registers another, then times logins with an unknown
email, with a wrong password for the user at cost 12 and with a wrong password for the user
whose hash still has cost 10 (interleaved, so machine noise hits all alike), and prints the
medians and their ratios. Ratios near 1.0 mean the failures are indistinguishable by timing.

    cargo build --release && python3 scripts/bench_login_timing.py [--rounds N]

Standard library only. Not a test: it prints figures and never fails on them.
"""

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BINARY = os.path.join(ROOT, "target", "release", "auth-service")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post(base, path, body):
    request = urllib.request.Request(
        base + path,
        data=json.dumps(body).encode(),
        headers={"content-type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status
    except urllib.error.HTTPError as err:
        return err.code


def timed_login(base, email, password):
    started = time.perf_counter()
    status = post(base, "/auth/login", {"email": email, "password": password})
    elapsed = time.perf_counter() - started
    if status != 401:
        sys.exit(f"expected 401, got {status}")
    return elapsed


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=40, help="logins of each kind (default 40)")
    args = parser.parse_args()
    if not os.path.exists(BINARY):
        sys.exit("build first: cargo build --release")
    port = free_port()
    workdir = tempfile.mkdtemp(prefix="auth-bench-")
    env = {
        "PATH": os.environ.get("PATH", ""),
        "PORT": str(port),
        "HOST": "127.0.0.1",
        "JWT_SECRET_KEY": "bench-secret-0123456789abcdef-0123456789",
        "DATABASE_URL": f"sqlite://{workdir}/bench.db",
        "LOG_LEVEL": "warn",
        "RATE_LIMIT_PER_SECOND": "0",
        # Every wrong password counts towards the lockout; keep it out of the way.
        "LOGIN_MAX_ATTEMPTS": "1000000",
        "LOGIN_MAX_FAILURES_PER_IP": "0",
    }
    base = f"http://127.0.0.1:{port}"

    def start(rounds):
        server = subprocess.Popen([BINARY], env={**env, "BCRYPT_ROUNDS": str(rounds)},
                                  stdout=subprocess.DEVNULL)
        for _ in range(200):
            try:
                urllib.request.urlopen(base + "/health/ready", timeout=1)
                break
            except (urllib.error.URLError, ConnectionError):
                time.sleep(0.05)
        return server

    # A user from before the cost went up: their hash keeps cost 10 until they next log in.
    server = start(10)
    assert post(base, "/auth/register", {"email": "old-cost@example.com", "password": "SecurePass123"}) == 201
    server.terminate()
    server.wait(timeout=30)
    server = start(12)
    try:
        assert post(base, "/auth/register", {"email": "known@example.com", "password": "SecurePass123"}) == 201
        timed_login(base, "warmup@example.com", "WrongPass123")
        unknown, wrong, old = [], [], []
        for i in range(args.rounds):
            unknown.append(timed_login(base, f"nobody{i}@example.com", "WrongPass123"))
            wrong.append(timed_login(base, "known@example.com", "WrongPass123"))
            old.append(timed_login(base, "old-cost@example.com", "WrongPass123"))
        mu, mw, mo = statistics.median(unknown), statistics.median(wrong), statistics.median(old)
        print(f"BCRYPT_ROUNDS=12, {args.rounds} logins of each kind, interleaved")
        print(f"median unknown email               : {mu * 1000:8.1f} ms")
        print(f"median wrong password (cost 12)    : {mw * 1000:8.1f} ms")
        print(f"median wrong password (cost 10 hash): {mo * 1000:8.1f} ms")
        print(f"ratio unknown/wrong                : {mu / mw:8.3f}")
        print(f"ratio unknown/old-cost             : {mu / mo:8.3f}")
    finally:
        server.terminate()
        server.wait(timeout=30)


if __name__ == "__main__":
    main()
