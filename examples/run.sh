#!/bin/sh
# Started by `make run`: the gateway (and the SIP sidecar, once built) on embedded defaults.
# Ctrl-C stops everything.
set -eu
cd "$(dirname "$0")/.."
mkdir -p "$SOFTPHONE_DATA_DIR"

pids=""
stop() { [ -n "$pids" ] && kill $pids 2>/dev/null; wait 2>/dev/null; exit 0; }
trap stop INT TERM

bin/caddy run --config Caddyfile.example --adapter caddyfile &
pids="$pids $!"

addr=${SOFTPHONE_LISTEN#*://}
port=${addr##*:}
case "$SOFTPHONE_LISTEN" in https://*) scheme=https ;; *) scheme=http ;; esac
base="$scheme://127.0.0.1:$port/pbxcore/api/module-softphone-backend/v1"
tries=0
until curl -fsS "$base/health" >/dev/null 2>&1; do
	tries=$((tries + 1))
	if [ $tries -gt 100 ]; then echo "gateway did not come up" >&2; stop; fi
	sleep 0.1
done

sip_info="  (bin/sipsidecar not built: no SIP registrar)"
if [ -x bin/sipsidecar ]; then
	: "${SIPSIDECAR_LISTEN:=udp:0.0.0.0:5060,tcp:0.0.0.0:5060,ws:0.0.0.0:5066}"
	: "${SIPSIDECAR_HTTP_ADDR:=127.0.0.1:9060}"
	: "${SIPSIDECAR_REALM:=softphone}"
	: "${SIPSIDECAR_AUTH_HOOK_URL:=$base/sip/auth}"
	: "${SIPSIDECAR_PUBLISH_URL:=$base/pub/users-state}"
	: "${SIPSIDECAR_REDIS_URL:=$SOFTPHONE_REDIS_URL}"
	export SIPSIDECAR_LISTEN SIPSIDECAR_HTTP_ADDR SIPSIDECAR_REALM SIPSIDECAR_AUTH_HOOK_URL SIPSIDECAR_PUBLISH_URL SIPSIDECAR_REDIS_URL
	if [ -n "${SOFTPHONE_SIP_AUTH_SECRET:-}" ]; then
		export SIPSIDECAR_AUTH_HOOK_SECRET="$SOFTPHONE_SIP_AUTH_SECRET"
	fi
	bin/sipsidecar &
	pids="$pids $!"
	sip_info="  SIP        $SIPSIDECAR_LISTEN  (realm $SIPSIDECAR_REALM, any domain)
  sidecar    http://$SIPSIDECAR_HTTP_ADDR/metrics  /healthz  /readyz  /locations/201@<domain>"
fi

cat <<INFO

softphone-gateway is running (Ctrl-C stops it).

  HTTP API   $base
$sip_info
  data       $SOFTPHONE_DATA_DIR (secret.key, security.log, state.journal)
  users      $SOFTPHONE_USERS_FILE

Demo users (username / SIP secret; the same pair logs in over HTTP and registers over SIP):
  201 / b749601f329a635a19c4a87bc359be3d
  202 / demo-secret-202
  203 / demo-secret-203   (stored as HA1 only)
  204 / demo-secret-204   (disabled)

Try:
  curl -sS -X POST $base/auth/login -H 'Content-Type: application/json' \\
    -d '{"username":"201","password":"b749601f329a635a19c4a87bc359be3d"}'

INFO
wait
