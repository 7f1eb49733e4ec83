#!/usr/bin/env bash
# Builds docker/Dockerfile and checks the image against a real Dovecot.
#
# Run as root on Debian 12 (CI calls it from .ci/run). No Docker engine and no
# container registry are needed: rootful podman (runc) builds and runs the
# image, and the base image the Dockerfile names, node:20-bookworm-slim, is
# replaced by a local stand-in built once from debootstrap plus the host's own
# Node 20 and npm (see docker/README.md). Only Debian's and npm's package
# registries are used.
#
#   1. apt-get installs podman, runc, debootstrap, openssl if missing
#   2. builds localhost/debian-base:bookworm (debootstrap) and the stand-in
#      docker.io/library/node:20-bookworm-slim, each only if it is missing
#   3. podman build --pull=never --format docker -f docker/Dockerfile
#   4. starts a throwaway Dovecot on the host (the test harness in build-dev/)
#   5. runs the image with --network host and env configuration, then checks
#      greeting, LOGIN, JMAPACCESS after login, GETJMAPACCESS, the user, the
#      HEALTHCHECK, /readyz and /metrics, and that `podman stop` ends it
#      quickly with exit code 0 while a logged-in session gets a BYE; then
#      runs it with the image's default ports on a bridge network to check
#      the HEALTHCHECK, the published ports and TLS from a mounted certificate
#
# Prints "ok - ..." / "not ok - ..." per check and ends with
# "docker: N passed, N failed"; exits 1 if anything failed. Containers are
# removed at the end (also on failure); the images are kept as a cache.
#
# Environment: DOCKER_TEST_KEEP_IMAGES=0 removes the test image at the end;
# DEBOOTSTRAP_MIRROR picks a Debian mirror for debootstrap (default: its own).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

IMAGE=localhost/jmapaccess-proxy:docker-test
BASE_IMAGE=localhost/debian-base:bookworm
NODE_IMAGE=docker.io/library/node:20-bookworm-slim
LABEL=jmapaccess-proxy.docker-test
JMAP_URL=https://mail.example.com/.well-known/jmap
STOP_LIMIT_MS=3000 # `podman stop -t 10`: a proxy that ignored SIGTERM would take 10 s

passed=0
failed=0
summary_done=0
pass() { passed=$((passed + 1)); echo "ok - $*"; }
fail() { failed=$((failed + 1)); echo "not ok - $*"; }
summary() {
  [ "$summary_done" = 1 ] && return
  summary_done=1
  echo "docker: ${passed} passed, ${failed} failed"
}

t_start=$(date +%s)
t_phase=$t_start
phase_name=
phase() { # phase NAME: say how long the previous phase took, start the next
  local now
  now=$(date +%s)
  [ -z "$phase_name" ] || echo "   (${phase_name}: $((now - t_phase)) s)"
  [ -z "$1" ] || echo "== $1"
  phase_name=$1
  t_phase=$now
}

WORK=$(mktemp -d /tmp/docker-test.XXXXXX)
DOVECOT_PID=

cleanup() {
  local rc=$?
  set +e
  trap - EXIT INT TERM
  if command -v podman >/dev/null 2>&1; then
    local ids
    ids=$(podman ps -a -q --filter "label=${LABEL}" 2>/dev/null)
    # shellcheck disable=SC2086
    [ -z "$ids" ] || podman rm -f -t 0 $ids >/dev/null 2>&1
    if [ "${DOCKER_TEST_KEEP_IMAGES:-1}" = 0 ]; then podman rmi -f "$IMAGE" >/dev/null 2>&1; fi
  fi
  if [ -n "$DOVECOT_PID" ]; then
    kill -TERM "$DOVECOT_PID" 2>/dev/null
    wait "$DOVECOT_PID" 2>/dev/null
  fi
  rm -rf "$WORK"
  [ -z "$phase_name" ] || phase ""
  if [ "$rc" -ne 0 ] && [ "$failed" -eq 0 ]; then fail "docker-test.sh stopped with exit status $rc (see above)"; fi
  summary
  echo "docker-test.sh: $(($(date +%s) - t_start)) s"
  [ "$failed" -eq 0 ] && [ "$rc" -eq 0 ] && exit 0
  exit 1
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Run a command with its output in a log file; on failure show the log's end.
quiet() { # quiet LOGNAME CMD...
  local log="$WORK/$1.log" rc=0
  shift
  "$@" >"$log" 2>&1 || rc=$?
  [ "$rc" -eq 0 ] && return 0
  echo "--- last lines of: $* ---"
  tail -n 60 "$log"
  echo "---"
  return "$rc"
}

if [ "$(id -u)" != 0 ]; then
  echo "docker-test.sh must run as root (rootful podman, apt-get, debootstrap)" >&2
  exit 1
fi

# --------------------------------------------------------------------------
phase "packages"
export DEBIAN_FRONTEND=noninteractive
missing=()
for cmd in podman runc debootstrap openssl; do # each command comes in the package of its name
  command -v "$cmd" >/dev/null 2>&1 || missing+=("$cmd")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "apt-get install ${missing[*]}"
  quiet apt-update apt-get update -qq
  quiet apt-install apt-get install -y -qq "${missing[@]}"
fi

# Settings podman needs on this kind of machine, without touching
# /etc/containers: runc (crun refuses a hybrid cgroup layout), ulimits at or
# below the hard limits (root may lack CAP_SYS_RESOURCE), no systemd.
cat >"$WORK/containers.conf" <<'EOF'
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]
[engine]
runtime = "runc"
events_logger = "file"
cgroup_manager = "cgroupfs"
EOF
export CONTAINERS_CONF="$WORK/containers.conf"

# Leftovers of an earlier run that was killed before its cleanup.
stale=$(podman ps -a -q --filter "label=${LABEL}")
# shellcheck disable=SC2086
[ -z "$stale" ] || podman rm -f -t 0 $stale >/dev/null

# --------------------------------------------------------------------------
phase "base images"
if podman image exists "$BASE_IMAGE"; then
  echo "$BASE_IMAGE: cached"
else
  echo "$BASE_IMAGE: debootstrap --variant=minbase bookworm"
  rootfs="$WORK/rootfs"
  # shellcheck disable=SC2086
  quiet debootstrap debootstrap --variant=minbase bookworm "$rootfs" ${DEBOOTSTRAP_MIRROR:-}
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
  tar -C "$rootfs" -c . | podman import -q --change 'CMD ["/bin/bash"]' - "$BASE_IMAGE" >/dev/null
  rm -rf "$rootfs"
fi

if podman image exists "$NODE_IMAGE"; then
  echo "$NODE_IMAGE: present"
else
  node_bin=$(command -v node)
  node_version=$("$node_bin" -p 'process.versions.node')
  case "$node_version" in
    20.*) ;;
    *) echo "the stand-in for $NODE_IMAGE needs the host's Node.js 20; this host has $node_version" >&2; exit 1 ;;
  esac
  echo "$NODE_IMAGE: local stand-in from $BASE_IMAGE + the host's node $node_version"
  ctx="$WORK/node-image"
  mkdir -p "$ctx"
  cp "$(readlink -f "$node_bin")" "$ctx/node"
  cp -a "$(npm root -g)/npm" "$ctx/npm"
  # Outbound TLS may be re-signed by a local CA that only the host's bundle has.
  cp "${NODE_EXTRA_CA_CERTS:-/etc/ssl/certs/ca-certificates.crt}" "$ctx/ca-certificates.crt"
  cat >"$ctx/Containerfile" <<EOF
# Local stand-in for the official $NODE_IMAGE (no registry here).
FROM $BASE_IMAGE
COPY node /usr/local/bin/node
COPY npm /usr/local/lib/node_modules/npm
COPY ca-certificates.crt /usr/local/share/host-ca/ca-certificates.crt
RUN ln -s ../lib/node_modules/npm/bin/npm-cli.js /usr/local/bin/npm \\
 && ln -s ../lib/node_modules/npm/bin/npx-cli.js /usr/local/bin/npx \\
 && groupadd --gid 1000 node \\
 && useradd --uid 1000 --gid node --shell /bin/bash --create-home node \\
 && node --version && npm --version
ENV NODE_VERSION=$node_version \\
    NODE_EXTRA_CA_CERTS=/usr/local/share/host-ca/ca-certificates.crt
LABEL org.opencontainers.image.description="local stand-in for $NODE_IMAGE built by scripts/docker-test.sh"
CMD ["node"]
EOF
  quiet node-image podman build --pull=never --format docker -t "$NODE_IMAGE" "$ctx"
  rm -rf "$ctx"
fi

# --------------------------------------------------------------------------
phase "podman build docker/Dockerfile"
grep -q "metrics-listen" src/cli.ts ||
  echo "note: src/cli.ts has no --metrics-listen yet; the image sets JMAPACCESS_PROXY_METRICS_LISTEN and its HEALTHCHECK needs /healthz"
old_image=$(podman image inspect -f '{{.Id}}' "$IMAGE" 2>/dev/null || true)
if quiet image-build podman build --pull=never --format docker -f docker/Dockerfile -t "$IMAGE" .; then
  pass "podman build -f docker/Dockerfile"
else
  fail "podman build -f docker/Dockerfile"
  exit 1
fi
new_image=$(podman image inspect -f '{{.Id}}' "$IMAGE")
if [ -n "$old_image" ] && [ "$old_image" != "$new_image" ]; then
  podman rmi "$old_image" >/dev/null 2>&1 || true # the previous test image, now untagged
fi
echo "image size: $(podman image inspect -f '{{.Size}}' "$IMAGE" | awk '{printf "%.0f MB", $1 / 1e6}')"

if hc=$(podman image inspect -f '{{json .Config.Healthcheck}}' "$IMAGE") && [[ "$hc" == *healthcheck.mjs* ]]; then
  pass "image has the HEALTHCHECK (docker format)"
else
  fail "image has no HEALTHCHECK: ${hc:-}"
fi

if out=$(podman run --rm --label "$LABEL" --network none "$IMAGE" --help 2>&1); then
  if grep -q -- "--metrics-listen" <<<"$out"; then pass "--help lists --metrics-listen"; else fail "--help does not list --metrics-listen"; fi
else
  fail "podman run IMAGE --help: $out"
fi

# --------------------------------------------------------------------------
phase "Dovecot on the host"
if [ ! -x node_modules/.bin/tsc ]; then quiet npm-ci npm ci --no-audit --no-fund; fi
harness=build-dev/test/harness/dovecot.js
if [ ! -f "$harness" ] || [ -n "$(find src test/harness scripts -name '*.ts' -newer "$harness" | head -n 1)" ]; then
  quiet tsc-dev npx tsc -p tsconfig.dev.json
fi
cat >"$WORK/dovecot.mjs" <<'EOF'
// Starts one harness Dovecot, writes its port to argv[3], stops it on SIGTERM.
import { writeFileSync } from 'node:fs';
import { pathToFileURL } from 'node:url';
const { ensureDovecotInstalled, startDovecot } = await import(pathToFileURL(process.argv[2]).href);
await ensureDovecotInstalled();
const dovecot = await startDovecot();
const stop = () => dovecot.stop().finally(() => process.exit(0));
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
writeFileSync(process.argv[3], `${dovecot.port}\n`);
setInterval(() => {}, 1 << 30);
EOF
node "$WORK/dovecot.mjs" "$ROOT/$harness" "$WORK/dovecot.port" >"$WORK/dovecot.log" 2>&1 &
DOVECOT_PID=$!
for _ in $(seq 1 600); do
  [ -s "$WORK/dovecot.port" ] && break
  kill -0 "$DOVECOT_PID" 2>/dev/null || break
  sleep 0.1
done
if [ ! -s "$WORK/dovecot.port" ]; then
  cat "$WORK/dovecot.log"
  fail "start Dovecot on the host"
  exit 1
fi
DOVECOT_PORT=$(cat "$WORK/dovecot.port")
echo "Dovecot on 127.0.0.1:$DOVECOT_PORT"

# Distinct free loopback ports (held together, then released).
read -r PROXY_PORT METRICS_PORT BRIDGE_PORT BRIDGE_TLS_PORT < <(node -e '
  const net = require("node:net");
  Promise.all([0, 1, 2, 3].map(() => new Promise((ok) => { const s = net.createServer(); s.listen(0, "127.0.0.1", () => ok(s)); })))
    .then((ss) => { console.log(ss.map((s) => s.address().port).join(" ")); ss.forEach((s) => s.close()); });')

# A small IMAP client: prints "ok NAME" or "FAIL NAME: detail" per check.
cat >"$WORK/client.mjs" <<'EOF'
import net from 'node:net';
const [port, jmapUrl, mode] = process.argv.slice(2); // mode "hold": stay logged in until closed
const sock = net.connect({ host: '127.0.0.1', port: Number(port) });
sock.setEncoding('latin1');
let buf = '';
const lines = [];
let wake = () => {};
let closed = false;
sock.on('data', (d) => {
  buf += d;
  for (let i; (i = buf.indexOf('\r\n')) >= 0; buf = buf.slice(i + 2)) lines.push(buf.slice(0, i));
  wake();
});
sock.on('error', (e) => { closed = `error: ${e.message}`; wake(); });
sock.on('close', () => { closed ||= 'connection closed'; wake(); });
const deadline = Date.now() + (mode === 'hold' ? 30_000 : 15_000);
async function line() {
  while (lines.length === 0) {
    if (closed) throw new Error(closed);
    if (Date.now() > deadline) throw new Error('timed out');
    await new Promise((r) => { wake = r; setTimeout(r, 200); });
  }
  return lines.shift();
}
async function command(tag, cmd) { // -> { untagged: [...], tagged }
  sock.write(`${tag} ${cmd}\r\n`);
  const untagged = [];
  for (;;) {
    const l = await line();
    if (l.startsWith(`${tag} `)) return { untagged, tagged: l };
    untagged.push(l);
  }
}
let failures = 0;
const check = (name, ok, detail) => {
  if (!ok) failures++;
  if (mode === 'hold') name = `held session: ${name}`;
  console.log(ok ? `ok ${name}` : `FAIL ${name}: ${detail}`);
};
try {
  const greeting = await line();
  check('greeting through the container (* OK)', greeting.startsWith('* OK'), JSON.stringify(greeting));
  const login = await command('a', 'LOGIN alice alicepw');
  check('LOGIN alice alicepw', /^a OK/i.test(login.tagged), JSON.stringify(login.tagged));
  const cap = await command('b', 'CAPABILITY');
  const capLine = cap.untagged.find((l) => /^\* CAPABILITY /i.test(l)) ?? '';
  check('JMAPACCESS in the capabilities after login', /^b OK/i.test(cap.tagged) && capLine.toUpperCase().split(' ').includes('JMAPACCESS'), JSON.stringify(capLine));
  const get = await command('c', 'GETJMAPACCESS');
  const expected = `* JMAPACCESS "${jmapUrl}"`;
  check('GETJMAPACCESS answers the JMAP URL', /^c OK/i.test(get.tagged) && get.untagged.includes(expected), JSON.stringify([...get.untagged, get.tagged]));
  if (mode === 'hold') {
    // Stay logged in until the server goes away: on SIGTERM the proxy must
    // say BYE to this session (after the shutdown grace), not just drop it.
    console.log('ready');
    const seen = [];
    try {
      for (;;) seen.push(await line());
    } catch (err) {
      check('BYE to a logged-in session on SIGTERM', seen.some((l) => l.startsWith('* BYE')), `${err.message} after ${JSON.stringify(seen)}`);
    }
  } else {
    const bye = await command('d', 'LOGOUT');
    check('LOGOUT', /^d OK/i.test(bye.tagged) && bye.untagged.some((l) => l.startsWith('* BYE')), JSON.stringify(bye.tagged));
  }
} catch (err) {
  check('IMAP session through the container', false, err.message);
}
sock.destroy();
process.exit(failures ? 1 : 0);
EOF

count_checks() { # count_checks < CLIENT-OUTPUT: pass/fail per "ok ..."/"FAIL ..." line
  local l
  while IFS= read -r l; do
    case "$l" in
      "ok "*) pass "${l#ok }" ;;
      "FAIL "*) fail "${l#FAIL }" ;;
      ready | "") ;;
      *) echo "  $l" ;;
    esac
  done
}

wait_greeting() { # wait_greeting PORT SECONDS [tls]: true once a "* " line is read
  node -e '
    const net = require("node:net");
    const tls = require("node:tls");
    const [port, secs] = process.argv.slice(1, 3).map(Number);
    const useTls = process.argv[3] === "tls";
    const end = Date.now() + secs * 1000;
    const attempt = () => {
      const s = useTls
        ? tls.connect({ port, host: "127.0.0.1", servername: "imap.example.test", rejectUnauthorized: false })
        : net.connect(port, "127.0.0.1");
      let b = "";
      s.setEncoding("latin1");
      s.on("data", (d) => { b += d; if (b.includes("\n")) { s.destroy(); process.exit(b.startsWith("* ") ? 0 : 1); } });
      s.on("error", () => retry());
      s.on("close", () => retry());
      let again = false;
      function retry() { if (again) return; again = true; if (Date.now() > end) process.exit(1); setTimeout(attempt, 100); }
    };
    attempt();' "$1" "$2" "${3:-}"
}

wait_healthy() { # wait_healthy CONTAINER SECONDS
  local end=$(($(date +%s) + $2))
  while :; do
    podman healthcheck run "$1" >"$WORK/healthcheck.out" 2>&1 && return 0
    [ "$(date +%s)" -lt "$end" ] || return 1
    sleep 0.5
  done
}

# --------------------------------------------------------------------------
phase "the image in front of Dovecot (--network host)"
# --check: the one-shot configuration and upstream check, configured by env.
if out=$(podman run --rm --label "$LABEL" --network host \
  -e JMAPACCESS_PROXY_UPSTREAM="imap://127.0.0.1:${DOVECOT_PORT}" \
  -e JMAPACCESS_PROXY_JMAP_URL="$JMAP_URL" \
  -e JMAPACCESS_PROXY_OBJECTID=assume \
  "$IMAGE" --check 2>"$WORK/check.err"); then
  pass "IMAGE --check against Dovecot exits 0"
else
  fail "IMAGE --check against Dovecot: $out $(grep -v systemd "$WORK/check.err")"
fi

C=jmapaccess-proxy-docker-test-$$
if ! podman run -d --name "$C" --label "$LABEL" --network host \
  -e JMAPACCESS_PROXY_UPSTREAM="imap://127.0.0.1:${DOVECOT_PORT}" \
  -e JMAPACCESS_PROXY_JMAP_URL="$JMAP_URL" \
  -e JMAPACCESS_PROXY_OBJECTID=assume \
  -e JMAPACCESS_PROXY_LISTEN="127.0.0.1:${PROXY_PORT}" \
  -e JMAPACCESS_PROXY_METRICS_LISTEN="127.0.0.1:${METRICS_PORT}" \
  -e JMAPACCESS_PROXY_SHUTDOWN_GRACE=1s \
  "$IMAGE" >"$WORK/run.out" 2>"$WORK/run.err"; then
  cat "$WORK/run.err"
  fail "podman run the image"
  exit 1
fi
# (podman run -d may print a harmless systemd error about healthcheck timers)
echo "container $C: proxy on 127.0.0.1:$PROXY_PORT, metrics on 127.0.0.1:$METRICS_PORT"
if wait_greeting "$PROXY_PORT" 20; then
  node "$WORK/client.mjs" "$PROXY_PORT" "$JMAP_URL" 2>&1 | count_checks
else
  fail "the proxy in the container answers on 127.0.0.1:$PROXY_PORT"
  podman logs "$C" 2>&1 | tail -n 20
fi

uid=$(podman exec "$C" node -p 'process.getuid()' 2>&1 || true)
if [ "$uid" = 1000 ]; then pass "runs as the node user (uid 1000)"; else fail "runs as uid 1000: got $uid"; fi

if wait_healthy "$C" 15; then
  pass "podman healthcheck run (GET /healthz on 127.0.0.1:$METRICS_PORT)"
else
  fail "podman healthcheck run: $(cat "$WORK/healthcheck.out")"
fi

# A logged-in session stays open across the stop (JMAPACCESS_PROXY_SHUTDOWN_GRACE=1s).
node "$WORK/client.mjs" "$PROXY_PORT" "$JMAP_URL" hold >"$WORK/hold.out" 2>&1 &
hold_pid=$!
for _ in $(seq 1 100); do
  grep -q '^ready' "$WORK/hold.out" 2>/dev/null && break
  kill -0 "$hold_pid" 2>/dev/null || break
  sleep 0.1
done
# /readyz (the upstream is reachable) and /metrics, from the host.
http_get() { # http_get URL: prints "STATUS BODY"
  node -e 'fetch(process.argv[1], { signal: AbortSignal.timeout(5000) }).then(async (r) => console.log(r.status, await r.text()), (e) => console.log(0, e.message))' "$1"
}
out=$(http_get "http://127.0.0.1:${METRICS_PORT}/readyz")
if [[ "$out" == 200* ]]; then pass "GET /readyz: 200"; else fail "GET /readyz: ${out:0:200}"; fi
out=$(http_get "http://127.0.0.1:${METRICS_PORT}/metrics")
if [[ "$out" == 200* ]] && grep -q '^jmapaccess_proxy_' <<<"$out"; then
  pass "GET /metrics: 200, Prometheus text"
else
  fail "GET /metrics: ${out:0:200}"
fi

t0=$(date +%s%N)
podman stop -t 10 "$C" >/dev/null 2>&1 || true
stop_ms=$((($(date +%s%N) - t0) / 1000000))
echo "podman stop -t 10 with a session open and a 1 s shutdown grace: ${stop_ms} ms"
if [ "$stop_ms" -lt $((STOP_LIMIT_MS + 1000)) ]; then
  pass "podman stop with a session open ends the container in ${stop_ms} ms (grace 1 s; limit $((STOP_LIMIT_MS + 1000)) ms)"
else
  fail "podman stop with a session open took ${stop_ms} ms (limit $((STOP_LIMIT_MS + 1000)) ms): SIGTERM not handled?"
fi
wait "$hold_pid" || true
count_checks <"$WORK/hold.out"
exit_code=$(podman inspect -f '{{.State.ExitCode}}' "$C")
if [ "$exit_code" = 0 ]; then pass "exit code 0 after SIGTERM"; else fail "exit code after SIGTERM: $exit_code"; fi
# Not `podman logs | grep -q`: under pipefail, grep -q leaving at the first
# match can fail the pipeline with podman's SIGPIPE.
logs=$(podman logs "$C" 2>&1 || true)
if grep -q '"signal":"SIGTERM"' <<<"$logs"; then
  pass "the proxy logged its SIGTERM shutdown"
else
  fail "no SIGTERM shutdown in the logs"
  podman logs "$C" 2>&1 | tail -n 20
fi

# --------------------------------------------------------------------------
phase "the image with its default ports and TLS (bridge network, -p)"
C2=jmapaccess-proxy-docker-test-defaults-$$
# A certificate mounted read-only, readable by the image's node user (gid 1000).
mkdir -p "$WORK/tls"
quiet openssl openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=imap.example.test \
  -addext subjectAltName=DNS:imap.example.test -keyout "$WORK/tls/key.pem" -out "$WORK/tls/cert.pem"
chgrp 1000 "$WORK/tls/key.pem" && chmod 640 "$WORK/tls/key.pem" && chmod 755 "$WORK/tls"
# The upstream is not reachable from the bridge network; only start-up, the
# published ports, TLS and the HEALTHCHECK on the default 0.0.0.0:9090 matter
# here (a client gets "* BYE [UNAVAILABLE]" from the proxy itself).
if podman run -d --name "$C2" --label "$LABEL" \
  -p "127.0.0.1:${BRIDGE_PORT}:1143" -p "127.0.0.1:${BRIDGE_TLS_PORT}:1993" \
  -v "$WORK/tls:/etc/jmapaccess-proxy/tls:ro" \
  -e JMAPACCESS_PROXY_UPSTREAM=imap://127.0.0.1:9 \
  -e JMAPACCESS_PROXY_JMAP_URL="$JMAP_URL" \
  -e JMAPACCESS_PROXY_LISTEN_TLS=0.0.0.0:1993 \
  -e JMAPACCESS_PROXY_TLS_CERT=/etc/jmapaccess-proxy/tls/cert.pem \
  -e JMAPACCESS_PROXY_TLS_KEY=/etc/jmapaccess-proxy/tls/key.pem \
  "$IMAGE" >"$WORK/run2.out" 2>"$WORK/run2.err"; then
  if wait_healthy "$C2" 15; then
    pass "podman healthcheck run with the image's default ENV (0.0.0.0:9090)"
  else
    fail "podman healthcheck run with the default ENV: $(cat "$WORK/healthcheck.out")"
    podman logs "$C2" 2>&1 | tail -n 20
  fi
  if wait_greeting "$BRIDGE_PORT" 10; then
    pass "published port 127.0.0.1:${BRIDGE_PORT} -> 1143 answers"
  else
    fail "published port 127.0.0.1:${BRIDGE_PORT} -> 1143 does not answer"
  fi
  if wait_greeting "$BRIDGE_TLS_PORT" 10 tls; then
    pass "published port 127.0.0.1:${BRIDGE_TLS_PORT} -> 1993 answers over TLS (certificate from env)"
  else
    fail "published port 127.0.0.1:${BRIDGE_TLS_PORT} -> 1993 does not answer over TLS"
    podman logs "$C2" 2>&1 | tail -n 20
  fi
  # No session open: the stop is immediate whatever the shutdown grace.
  t0=$(date +%s%N)
  podman stop -t 10 "$C2" >/dev/null 2>&1 || true
  stop_ms=$((($(date +%s%N) - t0) / 1000000))
  echo "podman stop -t 10 with no session open: ${stop_ms} ms"
  if [ "$stop_ms" -lt "$STOP_LIMIT_MS" ]; then
    pass "podman stop with no session open ends the container in ${stop_ms} ms (< ${STOP_LIMIT_MS} ms)"
  else
    fail "podman stop with no session open took ${stop_ms} ms (limit ${STOP_LIMIT_MS} ms): SIGTERM not handled?"
  fi
  exit_code=$(podman inspect -f '{{.State.ExitCode}}' "$C2")
  if [ "$exit_code" = 0 ]; then pass "default-ports container: exit code 0 after SIGTERM"; else fail "default-ports container: exit code $exit_code"; fi
else
  cat "$WORK/run2.err"
  fail "podman run with a published port"
fi

phase ""
