#!/usr/bin/env python3
"""auth-service benchmarks, side by side with a ceiling measured in the same run.

    bench/run.py            # everything (about 9 minutes)
    bench/run.py --quick    # shorter runs, for a first look

Builds the release binary and bench/baseline (a bare axum server doing only the HS256 check
and the JSON answer), then prints:

- verify requests/s of auth-service and of the baseline, alternating A B A B with the same
  load generator (wrk) and connection count, and their ratio, on SQLite and on PostgreSQL:
  one token presented again and again; 20,000 distinct live tokens of 200 users in turn
  (production: nearly every call a new token); and a skewed mix of them (Zipf: a few hot
  users, a long tail). For the two token mixes the baseline reads a token file of the same
  length and order (the same claims, signed with its own secret) through the same Lua request
  function, so the load generator costs both sides the same;
- RSS after 200,000 distinct valid tokens, and after 200,000 forged ones (bad signatures,
  unknown sessions, expired), against the bound the caches are built to;
- verify p50/p99 while logins saturate bcrypt at BCRYPT_ROUNDS=12, and the login rate against
  raw bcrypt capacity (cores / one hash, distinct users);
- idle and loaded RSS; start-up time to /health/ready on SQLite;
- with REFRESH_TOKEN_ROTATION=on, 2,000 refreshes of one session: latency and rows left;
- POST /auth/password/forgot for a known and an unknown email: the two medians;
- logout-all of a user holding 10,000 sessions on PostgreSQL: its time, the events it
  appended, and other users' logouts meanwhile against the same logouts before it;
- a full server: every slot held by silent sockets from 1, 4 and 16 addresses, then new
  /auth/verify clients from other addresses: their latency and how many went unanswered;
- the auth-verifier crate: requests/s of examples/orders_service's protected route (local
  ES256 verification) against the same route unprotected, alternating; target >= 0.8;
- `user import` of 100,000 and 1,000,000 users into SQLite and PostgreSQL: users/s (target:
  100,000 in under a minute) and the command's peak RSS (it should not grow with the file);
- webhooks: the medians of a registration and of a logout-all (both now write an event) with
  webhooks off and on, on SQLite and PostgreSQL, and the events one process then delivers per
  second to a local receiver;
- traces: the one-token verify ratio with traces off, on and sampled (to a local OTLP/HTTP
  sink), and on and unsampled, each against the baseline in the same run.

Figures, not assertions: these machines are shared and noisy, absolute numbers drift from run
to run, ratios from one run hold. Needs wrk (Debian: apt-get install wrk) and, for the
PostgreSQL half, a server at $BENCH_POSTGRES_URL (default postgres://postgres@127.0.0.1:5432).
BENCH_SERVICE=path/to/auth-service measures that binary instead of building this tree's.
"""

import argparse
import base64
import http.client as httpclient
import hashlib
import hmac
import json
import os
import re
import shutil
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGET = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
# BENCH_SERVICE measures another build of the service (an earlier commit's, for a before/after
# line) against the same baseline; the service is then not built here.
SERVICE = os.environ.get("BENCH_SERVICE", os.path.join(TARGET, "release", "auth-service"))
BASELINE = os.path.join(TARGET, "bench-baseline", "release", "bench-baseline")
EXAMPLE = os.path.join(TARGET, "release", "examples", "orders_service")
FEED_TOKEN = "bench-feed-token-0123456789abcdef"
PASSWORD = "SecurePass123"
SECRET = "bench-secret-0123456789abcdef0123456789abcdef"
# bench/baseline's own HS256 secret: its token files are ours, re-signed with it.
BASELINE_SECRET = "bench-baseline-secret-0123456789abcdef0123456789"
CONNECTIONS = 32


def build():
    if "BENCH_SERVICE" not in os.environ:
        subprocess.run(
            ["cargo", "build", "--release", "--locked", "--quiet", "--bins", "--examples"],
            cwd=ROOT, check=True)
    subprocess.run(
        ["cargo", "build", "--release", "--quiet", "--manifest-path", "bench/baseline/Cargo.toml"],
        cwd=ROOT,
        check=True,
        env={**os.environ, "CARGO_TARGET_DIR": os.path.join(TARGET, "bench-baseline")},
    )


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http(method, url, body=None, token=None):
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        request.add_header("Content-Type", "application/json")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"null")


class Service:
    """auth-service on a fresh port, with the given database and extra variables."""

    def __init__(self, database_url, **env):
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        variables = {
            "PATH": os.environ["PATH"],
            "HOST": "127.0.0.1",
            "PORT": str(self.port),
            "DATABASE_URL": database_url,
            "JWT_SECRET_KEY": SECRET,
            "RATE_LIMIT_PER_SECOND": "0",
            "LOGIN_MAX_FAILURES_PER_IP": "0",
            # Required with PostgreSQL; the bench reads no mail.
            "MAIL_URL": "log",
        }
        variables.update({k: str(v) for k, v in env.items()})
        self.started = time.perf_counter()
        self.process = subprocess.Popen(
            [SERVICE], env=variables, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        self.ready_after = self.wait_ready()

    def wait_ready(self):
        deadline = time.perf_counter() + 30
        while time.perf_counter() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                    s.sendall(b"GET /health/ready HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                    if s.recv(64).startswith(b"HTTP/1.1 200"):
                        return time.perf_counter() - self.started
            except OSError:
                pass
            time.sleep(0.002)
        raise SystemExit("auth-service did not become ready")

    def rss_mib(self):
        with open(f"/proc/{self.process.pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        return float("nan")

    def token(self, email):
        http("POST", self.base + "/auth/register", {"email": email, "password": PASSWORD})
        status, body = http("POST", self.base + "/auth/login", {"email": email, "password": PASSWORD})
        if status != 200:
            raise SystemExit(f"login failed: {status} {body}")
        return body["access_token"]

    def stop(self):
        self.process.terminate()
        self.process.wait(timeout=30)


class Baseline:
    def __init__(self):
        self.port = free_port()
        self.process = subprocess.Popen(
            [BASELINE], env={"PORT": str(self.port)}, stdout=subprocess.PIPE, text=True
        )
        self.token = self.process.stdout.readline().strip()
        deadline = time.time() + 10
        while time.time() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.02)

    def stop(self):
        self.process.terminate()
        self.process.wait(timeout=10)


def wrk(url, seconds, token=None, connections=CONNECTIONS, script=None):
    """requests/s, non-2xx count, and latency percentiles (ms) of one wrk run."""
    command = ["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "--latency"]
    if token:
        command += ["-H", f"Authorization: Bearer {token}"]
    if script:
        command += ["-s", script]
    output = subprocess.run(command + [url], capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))
    errors = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    latency = {}
    for percent, value, unit in re.findall(r"^\s+(50|99)%\s+([\d.]+)(us|ms|s)\s*$", output, re.M):
        latency[percent] = float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]
    return rps, int(errors.group(1)) if errors else 0, latency


USERS = 200
TOKENS_PER_USER = 100

TOKENS_SCRIPT = """
tokens = {}
for line in io.lines("%s") do tokens[#tokens + 1] = line end
math.randomseed(os.time() + tonumber(tostring({}):match("0x(%%x+)") or "0", 16))
counter = math.random(#tokens)
request = function()
  counter = counter %% #tokens + 1
  return wrk.format("GET", "%s", {["Authorization"] = "Bearer " .. tokens[counter]})
end
"""


def b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=")


def claims_of(token):
    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


def sign(header, claims, secret):
    signing_input = header.encode() + b"." + b64url(json.dumps(claims, separators=(",", ":")).encode())
    signature = hmac.new(secret.encode(), signing_input, hashlib.sha256).digest()
    return (signing_input + b"." + b64url(signature)).decode()


def distinct_tokens(token, count):
    """`count` valid tokens of one session that differ in `jti`: the real token's header and
    claims with a fresh `jti` each, signed with the bench's HS256 secret."""
    header = token.split(".")[0]
    claims = claims_of(token)
    tokens = []
    for _ in range(count):
        claims["jti"] = str(uuid.uuid4())
        tokens.append(sign(header, claims, SECRET))
    return tokens


def resigned(tokens, secret):
    """The same tokens (header and claims byte for byte, so the same length) signed with
    `secret`: what the baseline accepts."""
    out = []
    for token in tokens:
        header, payload, _ = token.split(".")
        signing_input = (header + "." + payload).encode()
        signature = hmac.new(secret.encode(), signing_input, hashlib.sha256).digest()
        out.append((signing_input + b"." + b64url(signature)).decode())
    return out


def production_tokens(service, users=USERS, per_user=TOKENS_PER_USER, prefix="prod"):
    """`users` users, one login each, and `per_user` live access tokens of each session:
    `users * per_user` distinct tokens, grouped by user."""
    grouped = []
    for i in range(users):
        token = service.token(f"{prefix}-{i}-{uuid.uuid4().hex[:6]}@bench.example")
        grouped.append(distinct_tokens(token, per_user))
    return grouped


def round_robin(grouped):
    """Every token once, users interleaved (user 0's first, user 1's first, ...)."""
    return [tokens[i] for i in range(len(grouped[0])) for tokens in grouped]


def zipf_mix(grouped, length, exponent=1.1, seed=7):
    """`length` picks: a user by Zipf rank (user k with weight 1/k^exponent: a few hot users,
    a long tail), then one of that user's tokens uniformly."""
    import random

    rng = random.Random(seed)
    weights = [1 / (rank ** exponent) for rank in range(1, len(grouped) + 1)]
    users = rng.choices(range(len(grouped)), weights=weights, k=length)
    return [rng.choice(grouped[user]) for user in users]


def token_script(workdir, name, tokens, path="/auth/verify"):
    """A wrk script presenting `tokens` in turn (from a random start), and its token file."""
    tokens_file = os.path.join(workdir, f"{name}.txt")
    with open(tokens_file, "w") as out:
        out.write("\n".join(tokens) + "\n")
    script = os.path.join(workdir, f"{name}.lua")
    with open(script, "w") as out:
        out.write(TOKENS_SCRIPT % (tokens_file, path))
    return script


def verify_ratio(name, database_url, seconds, rounds):
    """Alternates baseline and auth-service verify runs for three loads: one token presented
    again and again (as a service's requests in one session present it), 20,000 tokens of 200
    users in turn, and a Zipf mix of them; both servers get the same load generator, the same
    token order and token length. Prints the ratios and returns the loaded RSS."""
    service = Service(database_url, BCRYPT_ROUNDS=4)
    baseline = Baseline()
    workdir = tempfile.mkdtemp()
    try:
        token = service.token(f"verify-{uuid.uuid4().hex[:8]}@bench.example")
        grouped = production_tokens(service)
        mixes = {"round robin": round_robin(grouped)}
        mixes["zipf"] = zipf_mix(grouped, len(mixes["round robin"]))
        loads = [("one token", {"token": token}, {"token": baseline.token})]
        for mix, tokens in mixes.items():
            key = mix.replace(" ", "_")
            ours = token_script(workdir, f"ours_{key}", tokens)
            theirs = token_script(workdir, f"theirs_{key}", resigned(tokens, BASELINE_SECRET),
                                  path="/verify")
            loads.append((mix, {"script": ours}, {"script": theirs}))
        wrk(service.base + "/auth/verify", 2, token)  # warm up: caches, connections
        wrk(f"http://127.0.0.1:{baseline.port}/verify", 2, baseline.token)
        results = {load: ([], []) for load, _, _ in loads}
        for _ in range(rounds):
            for load, ours_args, theirs_args in loads:
                theirs, errors, _ = wrk(f"http://127.0.0.1:{baseline.port}/verify", seconds,
                                        **theirs_args)
                if errors:
                    raise SystemExit(f"baseline: {errors} verify requests failed ({load})")
                ours, errors, _ = wrk(service.base + "/auth/verify", seconds, **ours_args)
                if errors:
                    raise SystemExit(f"{name}: {errors} verify requests failed ({load})")
                results[load][0].append(ours)
                results[load][1].append(theirs)
        loaded = service.rss_mib()
    finally:
        baseline.stop()
        service.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    for load, (ours, theirs) in results.items():
        ours, theirs = statistics.median(ours), statistics.median(theirs)
        label = {"one token": "one token",
                 "round robin": f"{USERS * TOKENS_PER_USER:,} tokens, {USERS} users",
                 "zipf": "Zipf mix of them"}[load]
        print(f"verify {name:<10} {label:<26} auth-service {ours:>9,.0f} rps   "
              f"baseline {theirs:>9,.0f} rps   ratio {ours / theirs:.2f}   "
              f"(median of {rounds} alternating {seconds} s runs, c{CONNECTIONS})")
    return loaded


def forged_tokens(grouped, count):
    """`count` tokens no verifier may accept or remember, in thirds: a valid token with its
    signature's last characters changed, a token of an unknown session (signed with the
    bench's secret: only a holder of the key could make one), and a token expired an hour
    ago."""
    import random

    rng = random.Random(11)
    forged = []
    for i in range(count):
        token = rng.choice(rng.choice(grouped))
        header = token.split(".")[0]
        claims = claims_of(token)
        claims["jti"] = str(uuid.uuid4())
        kind = i % 3
        if kind == 0:
            signed = sign(header, claims, SECRET)
            forged.append(signed[:-6] + ("AAAAAA" if not signed.endswith("AAAAAA") else "BBBBBB"))
        elif kind == 1:
            claims["sid"] = str(uuid.uuid4())
            forged.append(sign(header, claims, SECRET))
        else:
            claims["exp"] = int(time.time()) - 3600
            claims["iat"] = claims["exp"] - 900
            forged.append(sign(header, claims, SECRET))
    return forged


def verify_memory(count=200_000, seconds=8):
    """RSS after `count` distinct valid tokens (each presented about once), then after `count`
    forged ones, on SQLite; then, on a fresh process, with every cache at its cap: `count`
    tokens of `count` sessions of `count // 2` users (seeded in the database), against the
    bound the caches are built to (BENCHMARKS.md says how it is reckoned)."""
    workdir = tempfile.mkdtemp()
    service = Service(f"sqlite://{workdir}/memory.db", BCRYPT_ROUNDS=4)
    try:
        grouped = production_tokens(service, per_user=count // USERS, prefix="mem")
        idle = service.rss_mib()
        valid = token_script(workdir, "valid", round_robin(grouped))
        rps, errors, _ = wrk(service.base + "/auth/verify", seconds, script=valid)
        if errors:
            raise SystemExit(f"memory: {errors} valid tokens refused")
        after_valid = service.rss_mib()
        forged = token_script(workdir, "forged", forged_tokens(grouped, count))
        forged_rps, accepted, _ = wrk(service.base + "/auth/verify", seconds, script=forged)
        after_forged = service.rss_mib()
        print(f"verify memory            idle {idle:.1f} MiB; after {count:,} distinct valid tokens "
              f"({rps * seconds:,.0f} verifies) {after_valid:.1f} MiB; after {count:,} forged "
              f"({forged_rps * seconds:,.0f} verifies, all refused) {after_forged:.1f} MiB")
    finally:
        service.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    caches_full(count, count // 2)


# What verify's caches may hold at most, in MiB, as the service weighs them
# (VERIFIED_ACCESS_BYTES, USER_BYTES, MAX_SESSIONS x SESSION_ENTRY_BYTES; BENCHMARKS.md).
CACHE_BOUND_MIB = {"tokens": 11, "users": 24, "sessions": 22}
# SQLite's own page cache besides: its default 2,000 KiB of pages per pooled connection, about
# 2.5 MiB with the pages' headers (measured: the same run with 2 connections instead of 20 holds
# 45 MiB less), for the default 20 connections.
SQLITE_PAGE_CACHE_MIB = 2.5 * 20


def seed_sessions(database, template_email, users, sessions):
    """`users` users and `sessions` live sessions spread over them, inserted straight into the
    SQLite file in the shape of the template user's rows; their ids, in session order."""
    connection = sqlite3.connect(database, timeout=30)
    try:
        user = connection.execute(
            "select id, password_hash, created_at, updated_at from users where email = ?",
            (template_email,)).fetchone()
        session = connection.execute(
            "select created_at, expires_at, last_used_at from sessions where user_id = ?",
            (user[0],)).fetchone()
        first = connection.execute("select max(id) from users").fetchone()[0] + 1
        ids = range(first, first + users)
        connection.executemany(
            "insert into users (id, email, password_hash, is_active, created_at, updated_at) "
            "values (?, ?, ?, 1, ?, ?)",
            ((i, f"full-{i}@bench.example", user[1], user[2], user[3]) for i in ids))
        seeded = [(uuid.uuid4(), first + n % users) for n in range(sessions)]
        connection.executemany(
            "insert into sessions (id, user_id, created_at, expires_at, last_used_at) "
            "values (?, ?, ?, ?, ?)",
            ((sid.bytes, owner, *session) for sid, owner in seeded))
        connection.commit()
    finally:
        connection.close()
    return seeded


def metric(metrics_base, name, label):
    with urllib.request.urlopen(metrics_base + "/metrics", timeout=5) as response:
        text = response.read().decode()
    found = re.search(rf'^{name}{{cache="{label}"}} ([\d.e+]+)$', text, re.M)
    return float(found.group(1)) if found else float("nan")


def caches_full(sessions, users, seconds=10, attempts=8):
    """RSS once every cache verify keeps is at its cap: one valid token per session of
    `sessions` sessions of `users` users, presented in turn until the caches stop growing."""
    workdir = tempfile.mkdtemp()
    database = os.path.join(workdir, "full.db")
    metrics_port = free_port()
    service = Service(f"sqlite://{database}", BCRYPT_ROUNDS=4,
                      METRICS_ADDR=f"127.0.0.1:{metrics_port}")
    metrics_base = f"http://127.0.0.1:{metrics_port}"
    try:
        template_email = "full-template@bench.example"
        template = claims_of(service.token(template_email))
        header = service.token(template_email).split(".")[0]
        seeded = seed_sessions(database, template_email, users, sessions)
        idle = service.rss_mib()
        tokens = []
        for sid, owner in seeded:
            claims = dict(template, sub=str(owner), user_id=owner, sid=str(sid),
                          jti=str(uuid.uuid4()), email=f"full-{owner}@bench.example")
            tokens.append(sign(header, claims, SECRET))
        script = token_script(workdir, "full", tokens)
        held = {}
        for _ in range(attempts):
            _, errors, _ = wrk(service.base + "/auth/verify", seconds, script=script)
            if errors:
                raise SystemExit(f"caches full: {errors} valid tokens refused")
            held = {cache: metric(metrics_base, "verify_cache_entries", cache)
                    for cache in ("tokens", "users", "sessions")}
            if held["sessions"] >= 0.98 * sessions and held["users"] >= 0.98 * users:
                break
        rss = service.rss_mib()
        bound = sum(CACHE_BOUND_MIB.values())
        print(f"verify memory, caches full  idle {idle:.1f} MiB; holding "
              f"{held['tokens']:,.0f} tokens, {held['users']:,.0f} users, "
              f"{held['sessions']:,.0f} sessions: {rss:.1f} MiB "
              f"(+{rss - idle:.1f}; bound +{bound} MiB of caches by design, "
              f"+{SQLITE_PAGE_CACHE_MIB:.0f} MiB SQLite page cache)")
    finally:
        service.stop()
        shutil.rmtree(workdir, ignore_errors=True)


LOGIN_SCRIPT = """
counter = 0
request = function()
  counter = counter + 1
  local body = string.format('{"email":"login-%%d@bench.example","password":"%s"}', counter %% %d)
  return wrk.format("POST", "/auth/login", {["Content-Type"] = "application/json"}, body)
end
"""


VERIFY_PACED = """
delay = function()
  return 1
end
"""


def logins_and_verify_latency(seconds, users=32):
    """Login rate against raw bcrypt capacity (16 clients, distinct users, cost 12), then
    verify latency while the same login load saturates bcrypt and other services verify at a
    steady pace (4 clients, each pausing 1 ms between calls)."""
    workdir = tempfile.mkdtemp()
    service = Service(f"sqlite://{workdir}/login.db", BCRYPT_ROUNDS=12)
    try:
        # Registration hashes too: register the users in parallel (a few seconds at cost 12).
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda i: http("POST", service.base + "/auth/register",
                                         {"email": f"login-{i}@bench.example", "password": PASSWORD}),
                          range(users)))
        token = service.token("verify-under-load@bench.example")
        login_script = os.path.join(workdir, "login.lua")
        with open(login_script, "w") as f:
            f.write(LOGIN_SCRIPT % (PASSWORD, users))
        paced_script = os.path.join(workdir, "paced.lua")
        with open(paced_script, "w") as f:
            f.write(VERIFY_PACED)

        def login_load(duration):
            return subprocess.Popen(
                ["wrk", "-t1", "-c16", f"-d{duration}s", "-s", login_script,
                 service.base + "/auth/login"],
                stdout=subprocess.PIPE, text=True,
            )

        def login_rate(process):
            output = process.communicate()[0]
            total, elapsed = re.search(r"(\d+) requests in ([\d.]+)s", output).groups()
            failed = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
            return (int(total) - (int(failed.group(1)) if failed else 0)) / float(elapsed)

        alone = login_rate(login_load(seconds))
        logins = login_load(seconds + 2)
        time.sleep(1)
        verify_rps, errors, latency = wrk(service.base + "/auth/verify", seconds, token,
                                          connections=4, script=paced_script)
        during = login_rate(logins)
    finally:
        service.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    cores = os.cpu_count() or 1
    one_hash = float(subprocess.run([BASELINE, "bcrypt", "12"], capture_output=True,
                                    text=True, check=True).stdout)
    capacity = cores / one_hash
    print(f"logins                   {alone:.2f}/s, raw bcrypt capacity {capacity:.2f}/s "
          f"({cores} cores / {one_hash * 1000:.0f} ms)   ratio {alone / capacity:.2f}")
    print(f"verify under login load  p50 {latency.get('50', float('nan')):.2f} ms   "
          f"p99 {latency.get('99', float('nan')):.2f} ms   at {verify_rps:,.0f} rps "
          f"({errors} errors) while 16 clients log in at cost 12 ({during:.2f} logins/s)")


def verifier_ratio(seconds, rounds):
    """The example service's protected route against the same route unprotected."""
    workdir = tempfile.mkdtemp()
    key = os.path.join(workdir, "es256.pem")
    subprocess.run([SERVICE, "keys", "generate", "--alg", "ES256", "--out", key], check=True,
                   stdout=subprocess.DEVNULL)
    service = Service(f"sqlite://{workdir}/verifier.db", JWT_ALGORITHM="ES256",
                      JWT_PRIVATE_KEY_FILE=key, REVOCATION_FEED_TOKENS=FEED_TOKEN)
    port = free_port()
    example = subprocess.Popen(
        [EXAMPLE],
        env={"PATH": os.environ["PATH"], "AUTH_URL": service.base,
             "REVOCATION_FEED_TOKEN": FEED_TOKEN, "PORT": str(port), "RUST_LOG": "warn"},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.perf_counter() + 30
        while http_status(base + "/health/ready") != 200:
            if time.perf_counter() > deadline:
                raise SystemExit("orders_service did not become ready")
            time.sleep(0.05)
        token = service.token("verifier@bench.example")
        wrk(base + "/orders", 2, token)
        wrk(base + "/orders-unprotected", 2, token)
        protected, unprotected = [], []
        for _ in range(rounds):
            unprotected.append(wrk(base + "/orders-unprotected", seconds, token)[0])
            rps, errors, _ = wrk(base + "/orders", seconds, token)
            if errors:
                raise SystemExit(f"verifier: {errors} protected requests failed")
            protected.append(rps)
        ours, theirs = statistics.median(protected), statistics.median(unprotected)
        print(f"verifier crate           protected {ours:>9,.0f} rps   unprotected {theirs:>9,.0f} rps   "
              f"ratio {ours / theirs:.2f} (target >= 0.80; ES256, median of {rounds})")
    finally:
        example.terminate()
        example.wait(timeout=30)
        service.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def http_status(url):
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status
    except Exception:  # noqa: BLE001 - not up yet
        return None


def startup_and_idle(runs=5):
    times, rss = [], []
    for _ in range(runs):
        workdir = tempfile.mkdtemp()
        service = Service(f"sqlite://{workdir}/start.db")
        times.append(service.ready_after)
        time.sleep(0.5)
        rss.append(service.rss_mib())
        service.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    print(f"start-up                 {statistics.median(times) * 1000:.0f} ms to /health/ready "
          f"(SQLite, fresh file, median of {runs})")
    print(f"idle RSS                 {statistics.median(rss):.1f} MiB")


def full_server_latency(holders=(1, 4, 16), slots=256, clients=30):
    """A full server: `slots` (MAX_CONNECTIONS) held by sockets that never send a request
    head, from N loopback addresses (N in `holders`), then `clients` new /auth/verify clients
    one after another from other addresses, each on a new connection: how long each waited
    for its answer (p50, p99, max) and how many got none within 5 s."""
    for n in holders:
        workdir = tempfile.mkdtemp()
        service = Service(f"sqlite://{workdir}/slots.db", BCRYPT_ROUNDS=4,
                          MAX_CONNECTIONS=slots, MAX_CONNECTIONS_PER_IP=slots,
                          HEADER_READ_TIMEOUT_SECONDS=60)
        held = []
        try:
            email = f"slots{n}@example.com"
            http("POST", service.base + "/auth/register", {"email": email, "password": PASSWORD})
            _, body = http("POST", service.base + "/auth/login",
                           {"email": email, "password": PASSWORD})
            token = body["access_token"]
            for i in range(slots):
                sock = socket.socket()
                sock.bind((f"127.0.9.{1 + i % n}", 0))
                sock.connect(("127.0.0.1", service.port))
                held.append(sock)
            time.sleep(0.5)
            took, failed = [], 0
            request = (f"GET /auth/verify HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}"
                       "\r\nConnection: close\r\n\r\n").encode()
            for i in range(clients):
                started = time.perf_counter()
                try:
                    with socket.socket() as sock:
                        sock.settimeout(5)
                        sock.bind((f"127.0.10.{1 + i}", 0))
                        sock.connect(("127.0.0.1", service.port))
                        sock.sendall(request)
                        answer = sock.recv(64)
                    if answer.startswith(b"HTTP/1.1 200"):
                        took.append(time.perf_counter() - started)
                    else:
                        failed += 1
                except OSError:
                    failed += 1
            took.sort()
            if took:
                p50 = took[len(took) // 2] * 1000
                p99 = took[min(len(took) - 1, int(len(took) * 0.99))] * 1000
                print(f"full server, {n:2} holder address(es): new verify client "
                      f"p50 {p50:.1f} ms, p99 {p99:.1f} ms, max {took[-1] * 1000:.1f} ms, "
                      f"{failed} of {clients} unanswered within 5 s ({slots} slots held)")
            else:
                print(f"full server, {n:2} holder address(es): no new client answered "
                      f"within 5 s ({slots} slots held)")
        finally:
            for sock in held:
                sock.close()
            service.stop()
            shutil.rmtree(workdir, ignore_errors=True)


def user_import(counts=(100_000, 1_000_000)):
    """`auth-service user import` of `count` users (a Django PBKDF2 hash each, half verified)
    into a fresh SQLite file and a fresh PostgreSQL database: users per second and the peak
    RSS of the command (the file is streamed: memory should not follow its size)."""
    workdir = tempfile.mkdtemp()
    django = "pbkdf2_sha256$10000$UDjDB2JGS0eY$6oEtxscgUtsjZE4UKRWM594+GTl0aKrZBy4HuB12/Q0="
    try:
        for count in counts:
            path = os.path.join(workdir, f"users-{count}.jsonl")
            with open(path, "w") as out:
                for i in range(count):
                    out.write(json.dumps({"email": f"user{i}@import.example",
                                          "password_hash": django,
                                          "email_verified": i % 2 == 0}) + "\n")
            size = os.path.getsize(path) / (1 << 20)
            admin, name = postgres_database()
            targets = [("SQLite", f"sqlite://{workdir}/import-{count}.db"),
                       ("PostgreSQL", f"{admin}/{name}")]
            try:
                for label, url in targets:
                    env = {"PATH": os.environ["PATH"], "DATABASE_URL": url,
                           "JWT_SECRET_KEY": SECRET, "MAIL_URL": "log"}
                    subprocess.run([SERVICE, "migrate"], env=env, check=True,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                    # Peak RSS of the command alone, as /usr/bin/time reports it (%M, KiB).
                    started = time.perf_counter()
                    done = subprocess.run(["/usr/bin/time", "-f", "%M", SERVICE, "user", "import", path],
                                          env=env, capture_output=True, text=True)
                    took = time.perf_counter() - started
                    peak_kib = int(done.stderr.strip().splitlines()[-1])
                    if done.returncode != 0 or f"imported {count} of {count}" not in done.stdout:
                        raise SystemExit(f"import failed: {done.returncode} {done.stdout} {done.stderr[-500:]}")
                    print(f"user import {label:<10} {count:>9,} users ({size:.0f} MiB)  "
                          f"{took:6.1f} s  {count / took:9,.0f} users/s  peak RSS {peak_kib / 1024:.1f} MiB")
            finally:
                subprocess.run(["psql", admin + "/postgres", "-qc",
                                f"drop database {name} with (force)"], check=False)
            os.remove(path)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def postgres_database():
    admin = os.environ.get("BENCH_POSTGRES_URL", "postgres://postgres@127.0.0.1:5432")
    name = f"bench_{uuid.uuid4().hex[:12]}"
    subprocess.run(["psql", admin + "/postgres", "-qc", f"create database {name}"], check=True)
    return admin, name


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="shorter runs")
    parser.add_argument("--verify-only", action="store_true",
                        help="only the SQLite verify ratios (while tuning the request path)")
    parser.add_argument("--verify-postgres-only", action="store_true",
                        help="only the PostgreSQL verify ratios")
    parser.add_argument("--memory-only", action="store_true",
                        help="only the verify memory line")
    parser.add_argument("--rotation-only", action="store_true",
                        help="only the rotation storage line")
    parser.add_argument("--forgot-only", action="store_true",
                        help="only the forgot-password timing line")
    parser.add_argument("--logout-all-only", action="store_true",
                        help="only the logout-all over 10,000 sessions line")
    parser.add_argument("--verifier-only", action="store_true",
                        help="only the auth-verifier crate's ratio")
    parser.add_argument("--import-only", action="store_true",
                        help="only the user import lines (100,000 and 1,000,000 users)")
    parser.add_argument("--webhooks-only", action="store_true",
                        help="only the webhook lines (request paths off/on, delivery rate)")
    parser.add_argument("--traces-only", action="store_true",
                        help="only the verify ratios with traces off, sampled and unsampled")
    parser.add_argument("--slots-only", action="store_true",
                        help="only the full-server lines (new clients while slots are held)")
    args = parser.parse_args()
    if not shutil.which("wrk"):
        sys.exit("bench: wrk is needed (Debian: apt-get install wrk)")
    seconds, rounds = (4, 2) if args.quick else (8, 3)
    build()
    print(f"# auth-service benchmarks, {os.cpu_count()} cores, "
          f"{time.strftime('%Y-%m-%d %H:%M')}, git {git_head()}")
    if args.verifier_only:
        verifier_ratio(seconds, rounds)
        return
    if args.rotation_only:
        rotation_storage(2000)
        return
    if args.forgot_only:
        forgot_timing(2000)
        return
    if args.logout_all_only:
        logout_all_timing(10_000)
        return
    if args.slots_only:
        full_server_latency()
        return
    if args.import_only:
        user_import()
        return
    if args.webhooks_only:
        webhook_lines(2000)
        return
    if args.traces_only:
        traces_lines(seconds, rounds)
        return
    workdir = tempfile.mkdtemp()
    if args.verify_only:
        verify_ratio("SQLite", f"sqlite://{workdir}/verify.db", seconds, rounds)
        return
    if args.memory_only:
        verify_memory()
        return
    if args.verify_postgres_only:
        admin, name = postgres_database()
        try:
            verify_ratio("PostgreSQL", f"{admin}/{name}", seconds, rounds)
        finally:
            subprocess.run(["psql", admin + "/postgres", "-qc",
                            f"drop database {name} with (force)"], check=False)
        return
    startup_and_idle()
    loaded = verify_ratio("SQLite", f"sqlite://{workdir}/verify.db", seconds, rounds)
    shutil.rmtree(workdir, ignore_errors=True)
    print(f"loaded RSS               {loaded:.1f} MiB (after the SQLite verify runs)")
    admin, name = postgres_database()
    try:
        verify_ratio("PostgreSQL", f"{admin}/{name}", seconds, rounds)
    finally:
        subprocess.run(["psql", admin + "/postgres", "-qc", f"drop database {name} with (force)"],
                       check=False)
    verify_memory()
    logins_and_verify_latency(seconds + 4)
    rotation_storage(2000)
    forgot_timing(2000)
    logout_all_timing(10_000)
    full_server_latency()
    verifier_ratio(seconds, rounds)
    user_import()
    webhook_lines(2000)
    traces_lines(seconds, rounds)


def rotation_storage(refreshes):
    """REFRESH_TOKEN_ROTATION=on: one session refreshed `refreshes` times in a row on SQLite,
    refresh latency and the refresh_tokens rows left (they were one per refresh, kept 30 days)."""
    workdir = tempfile.mkdtemp()
    database = os.path.join(workdir, "rotation.db")
    service = Service(f"sqlite://{database}", REFRESH_TOKEN_ROTATION="on", BCRYPT_ROUNDS=4)
    try:
        email = "rotation@example.com"
        http("POST", service.base + "/auth/register", {"email": email, "password": PASSWORD})
        _, body = http("POST", service.base + "/auth/login", {"email": email, "password": PASSWORD})
        token = body["refresh_token"]
        took = []
        for _ in range(refreshes):
            started = time.perf_counter()
            status, body = http("POST", service.base + "/auth/refresh", {"refresh_token": token})
            took.append(time.perf_counter() - started)
            if status != 200:
                raise SystemExit(f"refresh failed: {status} {body}")
            token = body["refresh_token"]
        with sqlite3.connect(database) as db:
            rows = db.execute("select count(*) from refresh_tokens").fetchone()[0]
        took.sort()
        print(f"rotation storage          {refreshes} refreshes of one session: "
              f"p50 {took[len(took) // 2] * 1000:.2f} ms, p99 {took[len(took) * 99 // 100] * 1000:.2f} ms, "
              f"{rows} refresh_tokens rows left")
    finally:
        service.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def forgot_timing(requests):
    """POST /auth/password/forgot for a known and an unknown email, alternating on one
    keep-alive connection: the two medians side by side (target: within 5%)."""
    workdir = tempfile.mkdtemp()
    service = Service(f"sqlite://{workdir}/forgot.db", BCRYPT_ROUNDS=4)
    try:
        known = "known@example.com"
        http("POST", service.base + "/auth/register", {"email": known, "password": PASSWORD})
        connection = httpclient.HTTPConnection("127.0.0.1", service.port, timeout=30)
        took = {"known": [], "unknown": []}
        for i in range(2 * requests):
            kind = "known" if i % 2 == 0 else "unknown"
            email = known if kind == "known" else "unknown@example.com"
            body = json.dumps({"email": email})
            started = time.perf_counter()
            connection.request("POST", "/auth/password/forgot", body,
                               {"Content-Type": "application/json"})
            response = connection.getresponse()
            response.read()
            took[kind].append(time.perf_counter() - started)
            if response.status != 202:
                raise SystemExit(f"forgot answered {response.status}")
        connection.close()
        known_ms = statistics.median(took["known"]) * 1000
        unknown_ms = statistics.median(took["unknown"]) * 1000
        print(f"forgot timing             known {known_ms:.3f} ms   unknown {unknown_ms:.3f} ms   "
              f"ratio {known_ms / unknown_ms:.3f}   (medians of {requests} each, alternating)")
    finally:
        service.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def logout_all_timing(sessions, bystanders=20):
    """Logout-all of one user holding `sessions` sessions (seeded in the database, as a store
    from before MAX_SESSIONS_PER_USER could hold) on PostgreSQL, while other users log out in a
    loop: the logout-all's time and the events it appended, and the bystanders' logout latency
    during it against the same logouts before it."""
    import threading

    admin, name = postgres_database()
    url = f"{admin}/{name}"
    service = Service(url, BCRYPT_ROUNDS=4)
    try:
        big = "hoarder@example.com"
        access = service.token(big)
        _, me = http("GET", service.base + "/auth/verify", token=access)
        refresh_of = {}
        for i in range(bystanders):
            email = f"bystander{i}@example.com"
            http("POST", service.base + "/auth/register", {"email": email, "password": PASSWORD})
            refresh_of[email] = []
            for _ in range(40):
                _, body = http("POST", service.base + "/auth/login",
                               {"email": email, "password": PASSWORD})
                refresh_of[email].append(body["refresh_token"])
        seed = f"""
            with s as (select gen_random_uuid() as id from generate_series(1, {sessions})),
            i as (insert into sessions (id, user_id, created_at, expires_at, last_used_at)
                  select id, {me['user_id']}, now() - interval '1 hour',
                         now() + interval '30 days', now() - interval '1 hour' from s)
            insert into refresh_tokens (jti, user_id, family_id, issued_at, expires_at)
            select gen_random_uuid(), {me['user_id']}, id, now() - interval '1 hour',
                   now() + interval '30 days' from s"""
        subprocess.run(["psql", url, "-qc", seed], check=True)
        queue = [t for tokens in refresh_of.values() for t in tokens]

        def logouts(count, took):
            connection = httpclient.HTTPConnection("127.0.0.1", service.port, timeout=30)
            for _ in range(count):
                body = json.dumps({"refresh_token": queue.pop()})
                started = time.perf_counter()
                connection.request("POST", "/auth/logout", body,
                                   {"Content-Type": "application/json"})
                connection.getresponse().read()
                took.append(time.perf_counter() - started)
            connection.close()

        before = []
        logouts(200, before)
        events = int(subprocess.run(["psql", url, "-tAc", "select count(*) from revocation_events"],
                                    capture_output=True, text=True, check=True).stdout)
        during, done = [], threading.Event()

        def background():
            while not done.is_set() and queue:
                logouts(1, during)

        worker = threading.Thread(target=background)
        worker.start()
        time.sleep(0.05)
        started = time.perf_counter()
        status, _ = http("POST", service.base + "/auth/logout-all", token=access)
        took = time.perf_counter() - started
        time.sleep(0.05)
        done.set()
        worker.join()
        if status != 200:
            raise SystemExit(f"logout-all answered {status}")
        appended = int(subprocess.run(
            ["psql", url, "-tAc", "select count(*) from revocation_events "
             f"where user_id = {me['user_id']}"],
            capture_output=True, text=True, check=True).stdout)
        live = int(subprocess.run(
            ["psql", url, "-tAc", "select count(*) from sessions "
             f"where user_id = {me['user_id']} and revoked_at is null"],
            capture_output=True, text=True, check=True).stdout)
        print(f"logout-all, {sessions} sessions  {took * 1000:.1f} ms on PostgreSQL, "
              f"{appended} events, {live} sessions left live; other users' logouts: "
              f"median {statistics.median(before) * 1000:.2f} ms before, "
              f"{statistics.median(during) * 1000:.2f} ms (max {max(during) * 1000:.2f}) during "
              f"({len(during)} logouts; {events} events before it)")
    finally:
        service.stop()
        subprocess.run(["psql", admin + "/postgres", "-qc", f"drop database {name} with (force)"],
                       check=False)


class WebhookReceiver:
    """A local webhook receiver: answers 204 on keep-alive connections and notes when each
    delivery arrived (no signature check: the bench measures the sender)."""

    def __init__(self):
        import http.server
        import threading
        arrivals = self.arrivals = []

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self):
                self.rfile.read(int(self.headers.get("content-length", 0)))
                arrivals.append(time.perf_counter())
                self.send_response(204)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self):
        self.server.shutdown()


def traces_lines(seconds, rounds):
    """`/auth/verify` with one token (SQLite), against the baseline in the same run, with traces
    off, on with every request sampled (each a new trace, exported to a local OTLP/HTTP sink
    every 5 s), and on with every request unsampled (`OTEL_TRACES_SAMPLER=always_off`), and
    what became of the sampled spans."""
    sink = WebhookReceiver()
    endpoint = sink.url.rsplit("/", 1)[0]
    baseline = Baseline()
    workdir = tempfile.mkdtemp()
    configs = [
        ("off", {}),
        ("sampled", {"OTEL_EXPORTER_OTLP_ENDPOINT": endpoint}),
        ("unsampled", {"OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
                       "OTEL_TRACES_SAMPLER": "always_off"}),
    ]
    try:
        for name, env in configs:
            service = Service(f"sqlite://{workdir}/traces-{name}.db", BCRYPT_ROUNDS=4, **env)
            try:
                token = service.token(f"traces-{name}@bench.example")
                wrk(service.base + "/auth/verify", 2, token)
                wrk(f"http://127.0.0.1:{baseline.port}/verify", 2, baseline.token)
                ours, theirs = [], []
                for _ in range(rounds):
                    rps, errors, _ = wrk(f"http://127.0.0.1:{baseline.port}/verify", seconds,
                                         baseline.token)
                    theirs.append(rps)
                    rps, errors, _ = wrk(service.base + "/auth/verify", seconds, token)
                    if errors:
                        raise SystemExit(f"traces {name}: {errors} verify requests failed")
                    ours.append(rps)
                with urllib.request.urlopen(service.base + "/metrics", timeout=10) as response:
                    metrics = response.read().decode()
                spans = {result: int(float(value)) for result, value in re.findall(
                    r'^trace_spans_total\{result="(\w+)"\} ([\d.e+]+)$', metrics, re.M)}
            finally:
                service.stop()
            ours, theirs = statistics.median(ours), statistics.median(theirs)
            fate = ", ".join(f"{n:,} {r}" for r, n in sorted(spans.items())) or "none exported"
            print(f"verify traces {name:<9}  one token   auth-service {ours:>9,.0f} rps   "
                  f"baseline {theirs:>9,.0f} rps   ratio {ours / theirs:.2f}   "
                  f"(median of {rounds} alternating {seconds} s runs, c{CONNECTIONS}; "
                  f"spans: {fate})")
    finally:
        baseline.stop()
        sink.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def webhook_lines(users):
    """Registration and logout-all medians with webhooks off and on (one binary, one keep-alive
    connection, BCRYPT_ROUNDS=4 so the hash does not hide the write), then the rate at which
    one process delivers the events those left (rows reset to undelivered, the service
    restarted) to a local receiver."""
    receiver = WebhookReceiver()
    secret = "whsec_" + base64.b64encode(os.urandom(32)).decode()
    hooks = {"WEBHOOK_URLS": receiver.url, "WEBHOOK_SECRET": secret}
    workdir = tempfile.mkdtemp()
    admin, name = postgres_database()
    try:
        for label, url in [("SQLite", f"sqlite://{workdir}/hooks.db"), ("PostgreSQL", f"{admin}/{name}")]:
            medians = {}
            for mode in ("off", "on"):
                service = Service(url, BCRYPT_ROUNDS=4, **(hooks if mode == "on" else {}))
                try:
                    connection = httpclient.HTTPConnection("127.0.0.1", service.port, timeout=30)
                    took = {"register": [], "logout-all": []}

                    def post(path, body, token=None):
                        headers = {"Content-Type": "application/json"}
                        if token:
                            headers["Authorization"] = f"Bearer {token}"
                        started = time.perf_counter()
                        connection.request("POST", path, json.dumps(body), headers)
                        response = connection.getresponse()
                        answer = json.loads(response.read() or b"null")
                        return response.status, answer, time.perf_counter() - started

                    for i in range(users):
                        email = f"hooks-{mode}-{i}@example.com"
                        account = {"email": email, "password": PASSWORD}
                        status, _, spent = post("/auth/register", account)
                        took["register"].append(spent)
                        status, body, _ = post("/auth/login", account)
                        status, _, spent = post("/auth/logout-all", {}, body["access_token"])
                        if status != 200:
                            raise SystemExit(f"logout-all answered {status}")
                        took["logout-all"].append(spent)
                    connection.close()
                    medians[mode] = {k: statistics.median(v) * 1000 for k, v in took.items()}
                finally:
                    service.stop()
            for kind in ("register", "logout-all"):
                off, on = medians["off"][kind], medians["on"][kind]
                print(f"webhooks {label:<10} {kind:<10} off {off:.3f} ms   on {on:.3f} ms   "
                      f"ratio {on / off:.3f}   (medians of {users})")
            # Every event again, undelivered; one process delivers them.
            reset = ("update webhook_outbox set delivered_at = null, failed_at = null, "
                     "leased_until = null, attempts = 0, next_attempt_at = created_at")
            if label == "SQLite":
                with sqlite3.connect(f"{workdir}/hooks.db") as db:
                    events = db.execute("select count(*) from webhook_outbox").fetchone()[0]
                    db.execute(reset)
            else:
                subprocess.run(["psql", f"{admin}/{name}", "-qc", reset], check=True)
                events = int(subprocess.run(
                    ["psql", f"{admin}/{name}", "-tAc", "select count(*) from webhook_outbox"],
                    check=True, capture_output=True, text=True).stdout)
            receiver.arrivals.clear()
            service = Service(url, **hooks)
            try:
                deadline = time.perf_counter() + 300
                while len(receiver.arrivals) < events and time.perf_counter() < deadline:
                    time.sleep(0.05)
                arrived = list(receiver.arrivals)
                spent = arrived[-1] - arrived[0] if len(arrived) > 1 else float("nan")
                print(f"webhooks {label:<10} delivery   {len(arrived):,} of {events:,} events in "
                      f"{spent:.1f} s: {len(arrived) / spent:,.0f} events/s (one process, 4 lanes)")
            finally:
                service.stop()
    finally:
        receiver.stop()
        shutil.rmtree(workdir, ignore_errors=True)
        subprocess.run(["psql", admin + "/postgres", "-qc", f"drop database {name} with (force)"],
                       check=False)


def git_head():
    result = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                            capture_output=True, text=True)
    return result.stdout.strip() or "?"


if __name__ == "__main__":
    main()
