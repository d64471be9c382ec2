#!/usr/bin/env bash
# Builds the Dockerfile, unchanged, with podman and runs the image as an operator would, then
# brings docker-compose.yml up with podman-compose. No Docker engine and no registry are needed:
# the base images (rust:1.95-slim-bookworm, gcr.io/distroless/cc-debian12:nonroot, postgres:15,
# axllent/mailpit) are stand-ins made here from Debian's packages (scripts/container/*), tagged
# under the upstream names so the files build as they are, and nothing is ever pulled.
#
# Checks: /health and /health/ready, register, login, verify; the SQLite file in the /data
# volume owned by 65532 and kept across `podman restart`; `podman healthcheck run`; the
# process's uid (65532) and capabilities (none); a clean exit on SIGTERM; the image size. Then
# the compose file: the service healthy on PostgreSQL, a registration's mail in the Mailpit
# stand-in, then down.
#
# podman's storage (/var/lib/containers) is kept between runs: an unchanged tree rebuilds in
# seconds, a source change in a few minutes (dependencies are their own layer). Stand-ins are
# remade only when their recipe or the host's Rust toolchain changes.
#
#   scripts/container-check.sh            # everything
#   SKIP_COMPOSE=1 scripts/container-check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
HERE=$ROOT/scripts/container
export CONTAINERS_CONF=$HERE/containers.conf
export CONTAINERS_REGISTRIES_CONF=$HERE/registries.conf
export BUILDAH_FORMAT=docker # the OCI format drops HEALTHCHECK

IMAGE=localhost/auth-service:check
NAME=auth-service-check
VOLUME=auth-service-check-data
PROJECT=auth-service-compose-check

say() { echo "container-check: $*"; }
# Without systemd, podman says on every start and stop that it cannot add its health-check
# timer; health checks run through `podman healthcheck run` here instead.
podman() { command podman "$@" 2> >(grep -v 'unable to get systemd connection' >&2); }
fail() {
    echo "container-check: FAILED: $*" >&2
    exit 1
}

# --- tools -------------------------------------------------------------------------------
need_packages=()
for tool in podman:podman buildah:buildah runc:runc debootstrap:debootstrap \
    /usr/lib/podman/netavark:netavark /usr/lib/podman/aardvark-dns:aardvark-dns \
    iptables:iptables newuidmap:uidmap curl:curl jq:jq; do
    # `type -P`, not `command -v`: the podman() wrapper above is a function, and a function
    # would pass for an installed podman.
    type -P "${tool%%:*}" >/dev/null 2>&1 || [ -x "${tool%%:*}" ] || need_packages+=("${tool##*:}")
done
if [ ${#need_packages[@]} -gt 0 ]; then
    say "installing ${need_packages[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need_packages[@]}" >/dev/null
fi
# Debian's podman-compose (1.0.3) leaves ${VAR:-} unexpanded; PyPI's 1.6 does not.
if ! python3 -m podman_compose version 2>/dev/null | grep -q 'podman-compose version 1.6'; then
    say "installing podman-compose 1.6 from PyPI"
    python3 -m pip install --quiet 'podman-compose==1.6.0'
fi

# --- stand-in base images ----------------------------------------------------------------
# The label `recipe` is the hash of what made the image: it is remade when that changes.
recipe_of() { cat "$@" | sha256sum | cut -c1-16; }
has_image() { # name recipe
    [ "$(podman image inspect --format '{{index .Config.Labels "recipe"}}' "$1" 2>/dev/null)" = "$2" ]
}
build_standin() { # tag containerfile recipe [podman build args...]
    local tag=$1 file=$2 recipe=$3
    shift 3
    if has_image "$tag" "$recipe"; then return; fi
    say "making the stand-in for $tag"
    podman build --quiet --pull=never --label "recipe=$recipe" -t "$tag" -f "$HERE/$file" "$@" "$HERE" >/dev/null
}

MIRROR=$(sed -n 's/^URIs: *\(http[^ ]*\/debian\)$/\1/p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -n 1)
MIRROR=${MIRROR:-http://deb.debian.org/debian}
BOOKWORM=localhost/auth-service-standin/bookworm:latest
bookworm_recipe=$(echo "debootstrap minbase bookworm" | sha256sum | cut -c1-16)
if ! has_image "$BOOKWORM" "$bookworm_recipe"; then
    say "debootstrap bookworm (minbase) from $MIRROR"
    tree=$(mktemp -d)
    debootstrap --variant=minbase bookworm "$tree" "$MIRROR" >/dev/null
    tar -C "$tree" -c . | podman import --change "LABEL recipe=$bookworm_recipe" - "$BOOKWORM" >/dev/null
    rm -rf "$tree"
fi

TOOLCHAIN=$(dirname "$(dirname "$(rustup which rustc)")")
rust_recipe=$( (rustc --version; recipe_of "$HERE/build.Containerfile"; echo "$bookworm_recipe") | sha256sum | cut -c1-16)
build_standin docker.io/library/rust:1.95-slim-bookworm build.Containerfile "$rust_recipe" \
    --volume "$TOOLCHAIN:/toolchain:ro" --volume /usr/local/share/ca-certificates:/extra-ca:ro
build_standin gcr.io/distroless/cc-debian12:nonroot runtime.Containerfile \
    "$(recipe_of "$HERE/runtime.Containerfile")$bookworm_recipe"
build_standin docker.io/library/postgres:15 postgres.Containerfile \
    "$(recipe_of "$HERE/postgres.Containerfile" "$HERE/postgres-entrypoint.sh")$bookworm_recipe"
build_standin docker.io/axllent/mailpit:latest mailpit.Containerfile \
    "$(recipe_of "$HERE/mailpit.Containerfile" "$HERE/mail-sink.py")$bookworm_recipe"

# --- the image ---------------------------------------------------------------------------
cleanup() {
    podman rm -f -t 0 "$NAME" >/dev/null 2>&1 || true
    podman volume rm -f "$VOLUME" >/dev/null 2>&1 || true
    # The compose project's containers, network and volumes, by podman-compose's own labels
    # (a `down` needs the file's variables, which a failed run may not have set).
    local label="label=io.podman.compose.project=$PROJECT"
    podman ps -aq --filter "$label" | xargs -r podman rm -f -v -t 0 >/dev/null 2>&1 || true
    podman volume ls -q --filter "$label" | xargs -r podman volume rm -f >/dev/null 2>&1 || true
    podman network ls -q --filter "$label" | xargs -r podman network rm -f >/dev/null 2>&1 || true
}
trap cleanup EXIT
cleanup

say "building the Dockerfile"
started=$(date +%s)
podman build --pull=never -t "$IMAGE" . >/tmp/container-check-build.log 2>&1 ||
    { tail -n 40 /tmp/container-check-build.log >&2; fail "the Dockerfile does not build"; }
say "built in $(($(date +%s) - started)) s"
size=$(podman image inspect --format '{{.Size}}' "$IMAGE")
say "image size: $((size / 1000000)) MB ($size bytes)"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
PORT=$(free_port)
BASE=http://127.0.0.1:$PORT
SECRET=$(head -c 48 /dev/urandom | base64 | tr -d '\n')

wait_ready() { # base url
    for _ in $(seq 1 120); do
        curl -fsS -o /dev/null "$1/health/ready" 2>/dev/null && return 0
        sleep 0.5
    done
    return 1
}
json_post() { curl -sS -o /tmp/container-check-body -w '%{http_code}' -H 'Content-Type: application/json' -d "$2" "$1"; }
expect() { # what got wanted
    [ "$2" = "$3" ] || fail "$1: got $2, wanted $3 ($(cat /tmp/container-check-body 2>/dev/null))"
}

say "running the image (SQLite in the /data volume)"
podman run -d --name "$NAME" -p "127.0.0.1:$PORT:8001" -v "$VOLUME:/data" \
    -e JWT_SECRET_KEY="$SECRET" -e BCRYPT_ROUNDS=4 "$IMAGE" >/dev/null
wait_ready "$BASE" || { podman logs "$NAME" >&2; fail "the container never became ready"; }
expect "/health" "$(curl -s -o /tmp/container-check-body -w '%{http_code}' "$BASE/health")" 200
jq -e '.status == "healthy" and .database == "connected"' /tmp/container-check-body >/dev/null ||
    fail "/health: $(cat /tmp/container-check-body)"
expect "/health/ready" "$(curl -s -o /tmp/container-check-body -w '%{http_code}' "$BASE/health/ready")" 200
user='{"email":"container@example.com","password":"SecurePass123"}'
expect "register" "$(json_post "$BASE/auth/register" "$user")" 201
expect "login" "$(json_post "$BASE/auth/login" "$user")" 200
access=$(jq -r .access_token /tmp/container-check-body)
expect "verify" "$(curl -s -o /tmp/container-check-body -w '%{http_code}' -H "Authorization: Bearer $access" "$BASE/auth/verify")" 200
jq -e '.email == "container@example.com"' /tmp/container-check-body >/dev/null || fail "verify: $(cat /tmp/container-check-body)"
say "health, ready, register, login and verify answer"

data=$(podman volume inspect --format '{{.Mountpoint}}' "$VOLUME")
owner=$(stat -c '%u:%g' "$data/auth_service.db")
[ "$owner" = "65532:65532" ] || fail "the database file in /data is owned by $owner, not 65532:65532"
say "the database file in /data is owned by $owner"

podman healthcheck run "$NAME" || fail "podman healthcheck run: unhealthy"
say "the HEALTHCHECK command passes"

pid=$(podman inspect --format '{{.State.Pid}}' "$NAME")
uid=$(awk '/^Uid:/ { print $2 }' "/proc/$pid/status")
caps=$(awk '/^CapEff:/ { print $2 }' "/proc/$pid/status")
[ "$uid" = 65532 ] || fail "the process runs as uid $uid, not 65532"
[ "$caps" = 0000000000000000 ] || fail "the process has capabilities $caps"
say "the process runs as uid $uid with no capabilities"
if podman exec "$NAME" /bin/sh -c true >/dev/null 2>&1; then
    fail "the runtime image has a shell"
fi

podman restart -t 20 "$NAME" >/dev/null
wait_ready "$BASE" || { podman logs "$NAME" >&2; fail "not ready after podman restart"; }
expect "login after restart" "$(json_post "$BASE/auth/login" "$user")" 200
say "the user is still there after podman restart"

started=$(date +%s)
podman stop -t 20 "$NAME" >/dev/null
took=$(($(date +%s) - started))
code=$(podman inspect --format '{{.State.ExitCode}}' "$NAME")
[ "$code" = 0 ] || { podman logs "$NAME" 2>&1 | tail -n 20 >&2; fail "exit code $code after SIGTERM"; }
[ "$took" -lt 20 ] || fail "SIGTERM took $took s (killed at the 20 s limit?)"
say "SIGTERM: exit code 0 after ${took} s"

# --- docker-compose.yml ------------------------------------------------------------------
if [ -n "${SKIP_COMPOSE:-}" ]; then
    say "image checks passed (compose skipped)"
    exit 0
fi
say "docker-compose.yml up (PostgreSQL and Mailpit stand-ins)"
COMPOSE_PORT=$(free_port)
export PORT=$COMPOSE_PORT JWT_SECRET_KEY=$SECRET
POSTGRES_PASSWORD=$(head -c 24 /dev/urandom | base64 | tr -d '/+=\n')
export POSTGRES_PASSWORD
compose() { python3 -m podman_compose -p "$PROJECT" "$@"; }
compose build >/tmp/container-check-compose.log 2>&1 ||
    { tail -n 40 /tmp/container-check-compose.log >&2; fail "podman-compose build"; }
# `depends_on: service_healthy` needs health checks run; without systemd nothing runs them,
# so PostgreSQL comes first, is checked by hand, then the rest.
compose up -d postgres mailpit >>/tmp/container-check-compose.log 2>&1 ||
    { tail -n 40 /tmp/container-check-compose.log >&2; fail "podman-compose up (postgres, mailpit)"; }
for _ in $(seq 1 60); do
    podman healthcheck run "${PROJECT}_postgres_1" >/dev/null 2>&1 && break
    sleep 1
done
podman healthcheck run "${PROJECT}_postgres_1" >/dev/null || fail "the PostgreSQL stand-in never became healthy"
compose up -d >>/tmp/container-check-compose.log 2>&1 ||
    { tail -n 40 /tmp/container-check-compose.log >&2; fail "podman-compose up"; }
CBASE=http://127.0.0.1:$COMPOSE_PORT
wait_ready "$CBASE" || { compose logs auth-service >&2 || true; fail "the compose service never became ready"; }
curl -s "$CBASE/health" >/tmp/container-check-body
jq -e '.status == "healthy"' /tmp/container-check-body >/dev/null || fail "compose /health: $(cat /tmp/container-check-body)"
podman healthcheck run "${PROJECT}_auth-service_1" >/dev/null || fail "the compose service is unhealthy"
expect "compose register" "$(json_post "$CBASE/auth/register" '{"email":"compose@example.com","password":"SecurePass123"}')" 201
say "the compose service is healthy on PostgreSQL and registers a user"
# jq -e on an empty file succeeds: the body must be there first.
has_mail() {
    [ -s /tmp/container-check-body ] &&
        jq -e '[.messages[].To[].Address] | index("compose@example.com") != null' /tmp/container-check-body >/dev/null 2>&1
}
for _ in $(seq 1 60); do
    curl -s http://127.0.0.1:8025/api/v1/messages >/tmp/container-check-body 2>/dev/null || true
    has_mail && break
    sleep 0.5
done
has_mail ||
    fail "no mail for compose@example.com in the Mailpit stand-in: $(cat /tmp/container-check-body)"
subject=$(jq -r '[.messages[] | select(.To[].Address == "compose@example.com")][0].Subject' /tmp/container-check-body)
[ -n "$subject" ] || fail "the mail for compose@example.com has no subject: $(cat /tmp/container-check-body)"
say "the registration's mail arrived in the Mailpit stand-in: \"$subject\""
# The service's anonymous /data volume goes with its container (`down -v` would leave it).
podman stop -t 20 "${PROJECT}_auth-service_1" >/dev/null
podman rm -v "${PROJECT}_auth-service_1" >/dev/null
compose down -v >>/tmp/container-check-compose.log 2>&1 || fail "podman-compose down"
say "compose down; all checks passed"
