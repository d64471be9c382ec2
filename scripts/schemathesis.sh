#!/usr/bin/env bash
# Runs schemathesis against /openapi.json of the built binary (SQLite in a temp dir): no 5xx,
# documented statuses, content types, headers and response schemas.
#
#   scripts/schemathesis.sh                     # CI: 25 examples per operation, fixed seed
#   MAX_EXAMPLES=500 SEED=random scripts/schemathesis.sh   # longer, new inputs each time
#
# positive_data_acceptance is left out on purpose: the contract validates beyond JSON Schema
# (password strength, common passwords, the email grammar, duplicate emails), so schema-valid
# bodies are legitimately refused with 409/422.
set -euo pipefail
cd "$(dirname "$0")/.."

BIN=${BIN:-${CARGO_TARGET_DIR:-target}/debug/auth-service}
MAX_EXAMPLES=${MAX_EXAMPLES:-25}
SEED=${SEED:-1}
[ -x "$BIN" ] || cargo build --locked
command -v st >/dev/null 2>&1 || python3 -m pip install --quiet schemathesis

workdir=$(mktemp -d)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
env -i PATH="$PATH" PORT="$port" HOST=127.0.0.1 BCRYPT_ROUNDS=4 RATE_LIMIT_PER_SECOND=0 \
    LOG_LEVEL=error JWT_SECRET_KEY=schemathesis-secret-0123456789abcdef \
    REVOCATION_FEED_TOKENS=schemathesis-feed-token-0123456789 \
    DATABASE_URL="sqlite://$workdir/st.db" "$BIN" >"$workdir/server.log" 2>&1 &
server=$!
trap 'kill "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true; rm -rf "$workdir"' EXIT
sleep 0.5
if ! kill -0 "$server" 2>/dev/null; then
    echo "schemathesis: the server did not start:" >&2
    cat "$workdir/server.log" >&2
    exit 1
fi

seed_args=(--seed "$SEED")
[ "$SEED" = random ] && seed_args=()
st run "http://127.0.0.1:$port/openapi.json" --wait-for-schema 60 \
    --checks all --exclude-checks positive_data_acceptance \
    --max-examples "$MAX_EXAMPLES" "${seed_args[@]}" --workers 2
