#!/usr/bin/env bash
# make bench: measure the gateway and the sidecar beside what a user would pick instead, on
# this machine, in one run, and write bench/RESULTS.md.
#   bench/run.sh [--smoke] [--out FILE]
# --smoke runs every part for about a second (make test runs it so the bench cannot rot).
# Needs: wrk, sipp (sip-tester), kamailio, redis-server, nginx + libnginx-mod-nchan. It
# installs them with apt-get when it can.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
SMOKE=0
OUT=bench/RESULTS.md
while [ $# -gt 0 ]; do
	case "$1" in
	--smoke) SMOKE=1 ;;
	--out) OUT=$2; shift ;;
	*) echo "usage: bench/run.sh [--smoke] [--out FILE]" >&2; exit 2 ;;
	esac
	shift
done

need="wrk sipp kamailio redis-server nginx"
missing=""
for b in $need; do command -v "$b" >/dev/null 2>&1 || [ -x "/usr/sbin/$b" ] || missing="$missing $b"; done
[ -f /usr/lib/nginx/modules/ngx_nchan_module.so ] || missing="$missing nchan"
if [ -n "$missing" ]; then
	if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk sip-tester kamailio redis-server nginx-light libnginx-mod-nchan >/dev/null
	else
		echo "missing:$missing; install: apt-get install wrk sip-tester kamailio redis-server nginx-light libnginx-mod-nchan" >&2
		exit 1
	fi
fi
export PATH="$PATH:/usr/sbin:/usr/local/go/bin"
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

if [ "$SMOKE" = 1 ]; then
	DUR=1; WRK_CONN=8; SIP_RATES=${SIP_RATES:-200}; SIP_SECS=1; SIP_ROUNDS=1; HTTP_ROUNDS=2; FAN_SIZES="50"; BENCHTIME=200x
else
	DUR=10; WRK_CONN=64; SIP_RATES=${SIP_RATES:-4000 8000 12000 16000 18000 20000 22000 24000 28000 32000 36000 40000}; SIP_SECS=10
	SIP_ROUNDS=${SIP_ROUNDS:-2}; HTTP_ROUNDS=${HTTP_ROUNDS:-3}
	FAN_SIZES="1000 5000 10000"; BENCHTIME=2s
fi
# SIP_REGISTRARS picks the rows of part 2 (default all three).
SIP_REGISTRARS=${SIP_REGISTRARS:-kamailio memory redis}

WORK=$(mktemp -d /tmp/softphone-bench.XXXXXX)
PIDS=()
cleanup() {
	set +e
	for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill -9 -- -"$p" 2>/dev/null; kill -9 "$p" 2>/dev/null; done
	rm -rf "$WORK"
}
trap cleanup EXIT

echo "building" >&2
./xcaddy.sh bin/caddy >/dev/null
go build -o bin/sipsidecar ./sipsidecar
go build -o bin/fanout ./bench/fanout

freeport() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
waitport() { for _ in $(seq 200); do (echo >/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0; sleep 0.05; done; echo "port $1 never opened" >&2; return 1; }
# start NAME CMD...: runs CMD in its own process group, logs to $WORK/NAME.log, sets $LASTPID
start() { local name=$1; shift; setsid "$@" >"$WORK/$name.log" 2>&1 & LASTPID=$!; PIDS+=("$LASTPID"); }
stop() { kill -9 -- -"$1" 2>/dev/null || true; wait "$1" 2>/dev/null || true; }

# Users for the bench: N → secret pw-N (the same rule kamailio.cfg uses).
python3 bench/users.py "$WORK/users.json" "$WORK/users.csv"
mkdir -p "$WORK/files" && head -c 4096 /dev/urandom >"$WORK/files/rec.wav"

REDIS_PORT=$(freeport)
start redis redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no --dir "$WORK"
REDIS_PID=$LASTPID
waitport "$REDIS_PORT"

# gateway STORE [NCHAN]: a bench gateway (no access log, as the Nchan it is compared with);
# sets $GW (base URL), $GWPID, $API.
gateway() {
	local store=$1 nchan=${2:-} port
	port=$(freeport)
	mkdir -p "$WORK/gw-$port"
	cat >"$WORK/gw-$port/Caddyfile" <<CF
# What Caddyfile.example's forward_auth route does after the check: the token leaves the
# query and the headers before the file is served.
(strip-token) {
	uri query {
		-authorization
		-token
		-access_token
	}
	request_header -Authorization
}
{
	admin off
	persist_config off
	storage file_system $WORK/gw-$port/caddy
	softphone {
		data_dir $WORK/gw-$port/data
		users file $WORK/users.json
		realm softphone
		store $store
		pubsub {
			nchan_url $nchan
		}
	}
}
http://127.0.0.1:$port {
	bind 127.0.0.1
	# Caddy orders handle blocks by path length: the respond route (the ceiling) is matched
	# first, the API second, the file routes after them.
	handle /pbxcore/api/module-softphone-backend/v1/respond-ceiling {
		respond "ok" 200
	}
	handle_path /file/* {
		root * $WORK/files
		file_server
	}
	handle_path /guard/* {
		softphone_guard
		root * $WORK/files
		file_server
	}
	# The forward_auth routes are Caddyfile.example's: the check, then strip-token, then the file.
	handle_path /fa/* {
		root * $WORK/files
		route {
			forward_auth 127.0.0.1:$port {
				uri /pbxcore/api/module-softphone-backend/v1/check-media-access
				copy_headers X-Softphone-User-Id X-Softphone-Username X-Softphone-Role
			}
			import strip-token
			file_server
		}
	}
	# The same check with forward_auth's subrequest answered in-process (transport softphone,
	# as Caddyfile.example does): no loopback connection and no second HTTP request.
	handle_path /fal/* {
		root * $WORK/files
		route {
			forward_auth localhost {
				uri /pbxcore/api/module-softphone-backend/v1/check-media-access
				copy_headers X-Softphone-User-Id X-Softphone-Username X-Softphone-Role
				transport softphone
			}
			import strip-token
			file_server
		}
	}
	# forward_auth's own ceiling: the same subrequest answered by an empty 200 that costs
	# nothing (empty, so Caddy can pool the connection as it does for check-media-access).
	handle /auth-ceiling {
		respond 200
	}
	handle_path /far/* {
		root * $WORK/files
		route {
			forward_auth 127.0.0.1:$port {
				uri /auth-ceiling
			}
			import strip-token
			file_server
		}
	}
	handle /pbxcore/api/module-softphone-backend/* {
		softphone_api
	}
}
CF
	start "gw-$port" bin/caddy run --config "$WORK/gw-$port/Caddyfile" --adapter caddyfile
	GWPID=$LASTPID
	waitport "$port"
	GW=http://127.0.0.1:$port
	API=$GW/pbxcore/api/module-softphone-backend/v1
}

token() {
	curl -sf -X POST "$API/auth/login" -H 'Content-Type: application/json' -d "{\"username\":\"$1\",\"password\":\"pw-$1\"}" |
		python3 -c 'import json,sys;print(json.load(sys.stdin)["access_token"])'
}

# best NAME "rps p50 p99": keeps in $best_NAME the run with the higher rate (the cores are
# shared with the load generator, so single runs wander by ±10%), and appends the rate to
# $runs_NAME, one per round, for the paired ratios (see pratio)
best() {
	local var=best_$1 runs=runs_$1 cur
	cur=${!var:-}
	if [ -z "$cur" ] || [ "${2%% *}" -gt "${cur%% *}" ]; then printf -v "$var" '%s' "$2"; fi
	printf -v "$runs" '%s' "${!runs:-}${!runs:+ }${2%% *}"
}

# pratio "RATES" "REFERENCE RATES" WHAT: the median over the rounds of each round's ratio of
# a route to its reference, measured a few seconds apart in the same round, with every
# round's ratio: a slow minute of the shared machine then lowers both sides of one round's
# ratio instead of one side of the ratio of two best runs.
pratio() {
	python3 - "$1" "$2" "$3" <<'PY'
import statistics, sys
xs, refs, what = [float(v) for v in sys.argv[1].split()], [float(v) for v in sys.argv[2].split()], sys.argv[3]
rs = [x / r for x, r in zip(xs, refs)]
m = statistics.median(rs)
each = ", ".join(f"{r:.3f}" for r in rs)
print(f"{m:.4f}× {what}" + (f" (rounds {each})" if len(rs) > 1 else ""))
PY
}

wrkonce() {
	local url=$1 hdr=${2:-} out
	if [ -n "$hdr" ]; then
		out=$(wrk -t2 -c"$WRK_CONN" -d"${DUR}s" --latency -H "$hdr" "$url")
	else
		out=$(wrk -t2 -c"$WRK_CONN" -d"${DUR}s" --latency "$url")
	fi
	echo "$out" >>"$WORK/wrk.out"
	echo "$out" | python3 -c '
import sys, re
t = sys.stdin.read()
def ms(v):
    m = re.match(r"([\d.]+)(us|ms|s|m)$", v)
    if not m: sys.exit("cannot read wrk latency %r in:\n%s" % (v, t))
    n, u = m.groups()
    return float(n) * {"us": 0.001, "ms": 1, "s": 1000, "m": 60000}[u]
rps = re.search(r"Requests/sec:\s+([\d.]+)", t).group(1)
non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", t)
if non2xx: sys.exit("wrk saw %s non-2xx answers" % non2xx.group(1))
p50 = ms(re.search(r"^\s+50%\s+(\S+)", t, re.M).group(1)); p99 = ms(re.search(r"^\s+99%\s+(\S+)", t, re.M).group(1))
print(f"{float(rps):.0f} {p50:.2f} {p99:.2f}")'
}

RES="$WORK/results.md"
: >"$RES"
say() { printf '%s\n' "$*" >>"$RES"; }

# PARTS selects sections (default all): PARTS="2 3" bench/run.sh
PARTS=${PARTS:-1 2 3 4}
part() { case " $PARTS " in *" $1 "*) return 0 ;; esac; return 1; }

# ---------------------------------------------------------------- 1. token checks
if part 1; then
echo "1. token checks" >&2
say "## 1. Token check (HTTP, wrk -t2 -c$WRK_CONN -d${DUR}s, on the same 2 cores)"
say ""
say "Each route ran $HTTP_ROUNDS times, the routes in turn. Requests/s and latency are from a route's best run;"
say "the ratio is the median of the rounds' ratios, each of two runs in the same round (every round's in brackets)."
say ""
say "| store | route | requests/s | p50 ms | p99 ms | ratio |"
say "|---|---|---:|---:|---:|---|"
for store in memory "redis://127.0.0.1:$REDIS_PORT/3"; do
	gateway "$store"
	T=$(token 1000)
	# HTTP_ROUNDS rounds over the routes, the best run of each kept: a drift of the shared
	# machine over a minute then touches every route alike instead of one (on the AMD VM
	# single runs of one route moved by ±10%, so three rounds, not two). Every route gets
	# the same request, token included, so the ratios compare the handling and not the size
	# of what wrk sends and Caddy parses (without it the ceilings read 5-10% higher).
	for round in $(seq "$HTTP_ROUNDS"); do
		best r "$(wrkonce "$API/respond-ceiling" "Authorization: Bearer $T")"
		best f "$(wrkonce "$GW/file/rec.wav" "Authorization: Bearer $T")"
		best c "$(wrkonce "$API/check-media-access" "Authorization: Bearer $T")"
		best g "$(wrkonce "$GW/guard/rec.wav" "Authorization: Bearer $T")"
		best a "$(wrkonce "$GW/fa/rec.wav" "Authorization: Bearer $T")"
		best l "$(wrkonce "$GW/fal/rec.wav" "Authorization: Bearer $T")"
		best e "$(wrkonce "$GW/far/rec.wav" "Authorization: Bearer $T")"
	done
	read -r r_rps r_p50 r_p99 <<<"$best_r"
	read -r f_rps f_p50 f_p99 <<<"$best_f"
	read -r c_rps c_p50 c_p99 <<<"$best_c"
	read -r g_rps g_p50 g_p99 <<<"$best_g"
	read -r a_rps a_p50 a_p99 <<<"$best_a"
	read -r l_rps l_p50 l_p99 <<<"$best_l"
	read -r e_rps e_p50 e_p99 <<<"$best_e"
	name=${store%%:*}
	say "| $name | \`respond\` (Caddy's ceiling) | $r_rps | $r_p50 | $r_p99 | 1.00× respond |"
	say "| $name | file, unprotected | $f_rps | $f_p50 | $f_p99 | $(pratio "$runs_f" "$runs_r" respond) |"
	say "| $name | \`check-media-access\`, valid token | $c_rps | $c_p50 | $c_p99 | $(pratio "$runs_c" "$runs_r" respond) |"
	say "| $name | file behind \`softphone_guard\` | $g_rps | $g_p50 | $g_p99 | $(pratio "$runs_g" "$runs_f" unprotected) |"
	say "| $name | file behind \`forward_auth\` (\`transport softphone\`, in-process) → \`check-media-access\` | $l_rps | $l_p50 | $l_p99 | $(pratio "$runs_l" "$runs_f" unprotected) |"
	say "| $name | file behind \`forward_auth\` → \`check-media-access\` over loopback | $a_rps | $a_p50 | $a_p99 | $(pratio "$runs_a" "$runs_f" unprotected); $(pratio "$runs_a" "$runs_e" "the loopback ceiling") |"
	say "| $name | file behind \`forward_auth\` → bare \`respond 200\` over loopback (the loopback ceiling) | $e_rps | $e_p50 | $e_p99 | $(pratio "$runs_e" "$runs_f" unprotected) |"
	unset best_r best_f best_c best_g best_a best_l best_e runs_r runs_f runs_c runs_g runs_a runs_l runs_e
	stop "$GWPID"
done
say ""
fi

# ---------------------------------------------------------------- 2. SIP REGISTER
if part 2; then
echo "2. SIP REGISTER" >&2
# higher A B: the larger of two integers
higher() { if [ "$2" -gt "$1" ]; then echo "$2"; else echo "$1"; fi; }
# sipprate TARGET PORTFILE: the highest rate SIPp achieved over the steps of SIP_RATES it
# sustained (see siptry). A step near the ceiling can pass with a lower achieved rate than
# the step below it; the highest sustained rate is the larger one.
sipprate() {
	local target=$1 best=0 good=0 bad=0 rate verdict lport mid
	lport=$(freeport) # one SIPp port for every step: the same phones re-register
	for rate in $SIP_RATES; do
		verdict=$(siptry "$target" "$rate" "$lport")
		echo "  $target at $rate/s: $verdict" >&2
		if [ "${verdict%% *}" != ok ]; then
			bad=$rate
			break
		fi
		good=$rate
		best=$(higher "$best" "$(echo "$verdict" | cut -d' ' -f2)")
	done
	if [ "$bad" = 0 ]; then
		best="≥ $best" # sustained every step: its ceiling is above the highest rate tried
	fi
	# Between the last sustained step and the first failed one, halve the gap twice.
	if [ "$bad" -gt 0 ] && [ "$SMOKE" = 0 ]; then
		for _ in 1 2; do
			mid=$(((good + bad) / 2))
			verdict=$(siptry "$target" "$mid" "$lport")
			echo "  $target at $mid/s: $verdict" >&2
			if [ "${verdict%% *}" = ok ]; then
				good=$mid
				best=$(higher "$best" "$(echo "$verdict" | cut -d' ' -f2)")
			else
				bad=$mid
			fi
		done
	fi
	echo "$best"
}

# siptry TARGET RATE LPORT: one SIPp run; prints the verdict line of sipprate's rule.
siptry() {
	local target=$1 rate=$2 lport=$3 calls code=0
	# Two quiet seconds first: answers a registrar still owes the previous (overloaded) run
	# would otherwise reach this run's SIPp, on the same port, as unexpected messages.
	sleep 2
	calls=$((rate * SIP_SECS))
	(cd "$WORK" && timeout $((SIP_SECS * 4 + 20)) sipp "$target" -sf "$ROOT/sipsidecar/testdata/register-auth.xml" \
		-inf "$WORK/users.csv" -i 127.0.0.1 -p "$lport" -r "$rate" -m "$calls" -l $((rate * 2)) \
		-nostdin -timeout $((SIP_SECS * 4 + 10))s -timeout_error -max_socket 2000 -buff_size 4194304 \
		-trace_err -error_file "$WORK/sipp-errors.log" >"$WORK/sipp.out" 2>&1) || code=$?
	python3 - "$WORK/sipp.out" "$calls" "$rate" "$code" <<'PY'
import re, sys
t = open(sys.argv[1], errors="replace").read()
calls, rate, code = int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
def num(pat):
    m = re.findall(pat, t)
    return float(m[-1]) if m else -1
ok = num(r"Successful call\s*\|\s*\d+\s*\|\s*(\d+)")
failed = num(r"Failed call\s*\|\s*\d+\s*\|\s*(\d+)")
total = num(r"\d+\s+([\d.]+) s\s+\d+\s+\S+\(UDP\)")
unexpected = sum(int(x) for x in re.findall(r"<----------\s+\d+\s+\d+\s+\d+\s+(\d+)", t))
sustained = code == 0 and ok == calls and failed == 0 and unexpected == 0 and 0 < total <= calls / rate * 1.1 + 0.2
print(f"{'ok' if sustained else 'no'} {int(ok / total) if total > 0 else 0} ok={ok:.0f} failed={failed:.0f} unexpected={unexpected} time={total}s")
PY
}
say "## 2. SIP REGISTER with digest auth (SIPp, MD5, one user per call from a 20,000-user injection file)"
say ""
say "Each call is REGISTER → 401 → REGISTER with Authorization → 200. A rate counts when SIPp ran it"
say "for ${SIP_SECS}s with zero failed calls and zero unexpected messages and finished within 10% of"
say "the time it asked for; rates tried: $SIP_RATES, then twice halfway between the last sustained and"
say "the first failed step. The table gives the highest rate SIPp achieved over the sustained steps,"
say "best of $SIP_ROUNDS rounds (each registrar's ladder once per round, the registrars in turn)."
say ""
say "| registrar | highest sustained registrations/s | each round | ratio to Kamailio |"
say "|---|---:|---|---|"
# Every registrar climbs its ladder SIP_ROUNDS times, the rounds interleaved (Kamailio, memory,
# Redis, then again) and the best round kept: on a shared VM one ladder can lose a fifth of
# its rate to a slow minute, and interleaving hands such a minute to one round of one side
# instead of deciding a ratio. Each round's rate is in the table.
declare -A SIP_BEST SIP_ALL
sipround() { # NAME RATE: keeps NAME's best rate and the list of all its rounds
	local new=${2//[^0-9]/} old=${SIP_BEST[$1]:-0}
	old=${old//[^0-9]/}
	SIP_ALL[$1]="${SIP_ALL[$1]:+${SIP_ALL[$1]}, }$2"
	# the higher rate; at a tie, "≥ N" (every step sustained) over "N"
	if [ "$new" -gt "$old" ] || { [ "$new" = "$old" ] && [ "$2" != "$new" ]; }; then
		SIP_BEST[$1]=$2
	fi
}
gateway memory
for round in $(seq "$SIP_ROUNDS"); do
	echo "  round $round of $SIP_ROUNDS" >&2
	if [[ " $SIP_REGISTRARS " == *" kamailio "* ]]; then
		KPORT=$(freeport)
		sed "s/127.0.0.1:5090/127.0.0.1:$KPORT/" bench/kamailio.cfg >"$WORK/kamailio.cfg"
		start kamailio kamailio -f "$WORK/kamailio.cfg" -DD -E -m 256 -M 16 -P "$WORK/kamailio.pid" -w "$WORK"
		KPID=$LASTPID
		sleep 1
		python3 bench/replay.py "127.0.0.1:$KPORT" 1000 pw-1000 >&2
		sipround kamailio "$(sipprate "127.0.0.1:$KPORT")"
		stop "$KPID"
	fi
	for store in memory redis; do
		[[ " $SIP_REGISTRARS " == *" $store "* ]] || continue
		SPORT=$(freeport); HPORT=$(freeport)
		redis_url=""
		[ "$store" = redis ] && redis_url="redis://127.0.0.1:$REDIS_PORT/4"
		start "sidecar-$store" env SIPSIDECAR_LISTEN="udp:127.0.0.1:$SPORT" SIPSIDECAR_HTTP_ADDR="127.0.0.1:$HPORT" \
			SIPSIDECAR_AUTH_HOOK_URL="$API/sip/auth" SIPSIDECAR_REALM=softphone SIPSIDECAR_REDIS_URL="$redis_url" \
			SIPSIDECAR_DIGEST_ALGORITHMS=MD5 SIPSIDECAR_RATE_LIMIT=1000000 SIPSIDECAR_RATE_BURST=1000000 \
			SIPSIDECAR_NONCE_SECRET=bench-nonce-secret-0123456789 SIPSIDECAR_LOG_LEVEL=error bin/sipsidecar
		SCPID=$LASTPID
		waitport "$HPORT"
		python3 bench/replay.py "127.0.0.1:$SPORT" 1000 pw-1000 >&2
		sipround "$store" "$(sipprate "127.0.0.1:$SPORT")"
		stop "$SCPID"
	done
done
K_RATE=${SIP_BEST[kamailio]:-0}
[ -z "${SIP_BEST[kamailio]:-}" ] || say "| Kamailio 5.6 (registrar + auth, usrloc in memory, 4 UDP children, 256 MB shm) | $K_RATE | ${SIP_ALL[kamailio]} | 1.00× |"
for store in memory redis; do
	[ -n "${SIP_BEST[$store]:-}" ] || continue
	S_RATE=${SIP_BEST[$store]}
	say "| sipsidecar, $store store, callback answered by the gateway | $S_RATE | ${SIP_ALL[$store]} | $(python3 - "$S_RATE" "$K_RATE" "${SIP_ALL[$store]}" "${SIP_ALL[kamailio]:-}" <<'PY'
import re, sys
num = lambda v: int(re.sub(r"[^0-9]", "", v) or 0)
best, kbest, rounds, krounds = sys.argv[1:]
line = f"{num(best) / max(num(kbest), 1):.2f}×"
pairs = [(num(a), num(b)) for a, b in zip(rounds.split(","), krounds.split(",")) if num(b)]
if len(pairs) > 1:
    line += " (each round against that round's Kamailio: " + ", ".join(f"{a / b:.2f}×" for a, b in pairs) + ")"
print(line)
PY
) |"
done
stop "$GWPID"
say ""
fi

# ---------------------------------------------------------------- 3. presence fan-out
if part 3; then
echo "3. presence fan-out" >&2
NPORT=$(freeport)
mkdir -p "$WORK/nchan/temp"
sed "s/listen 127.0.0.1:8089;/listen 127.0.0.1:$NPORT;/" docker/nginx-nchan.conf >"$WORK/nchan/nginx.conf"
say "## 3. Presence fan-out (users-state, one publish, N subscribers; load client bench/fanout on the same machine)"
say ""
say "Latency is from the publish to each subscriber's receipt. Memory is the server process's RSS growth"
say "divided by N, read from /proc after the subscribers connected (a fresh server per row)."
say ""
say "| server | mode | N | delivered | p50 ms | p99 ms | max ms | KiB per subscriber |"
say "|---|---|---:|---:|---:|---:|---:|---:|"
fan() { # LABEL MODE N SUBURL PUBURL PID
	local line
	line=$(bin/fanout -sub "$4" -pub "$5" -n "$3" -mode "$2" -pid "$6" -timeout 30s)
	python3 - "$1" "$line" <<'PY' >>"$RES"
import sys
label, line = sys.argv[1], sys.argv[2]
kv = dict(p.split("=", 1) for p in line.split())
mem = kv["kib_per_sub"] if float(kv["kib_per_sub"]) >= 0 else "n/a"
print(f"| {label} | {kv['mode']} | {kv['subscribers']} | {kv['delivered']} | {kv['p50_ms']} | {kv['p99_ms']} | {kv['max_ms']} | {mem} |")
PY
}
for n in $FAN_SIZES; do
	for mode in longpoll eventsource; do
		start nchan nginx -c "$WORK/nchan/nginx.conf" -p "$WORK/nchan"
		NCPID=$LASTPID
		waitport "$NPORT"
		NGWORKER=$(pgrep -P "$NCPID" | head -1 || echo 0)
		fan "nginx + Nchan direct" "$mode" "$n" "http://127.0.0.1:$NPORT/sub/users-state" "http://127.0.0.1:$NPORT/pub/users-state" "${NGWORKER:-0}"
		gateway memory "http://127.0.0.1:$NPORT"
		T=$(token 1000)
		fan "gateway → Nchan" "$mode" "$n" "$API/sub/users-state?token=$T" "$API/pub/users-state" "$GWPID"
		stop "$GWPID"
		stop "$NCPID"
		gateway memory
		T=$(token 1000)
		fan "gateway, embedded broker" "$mode" "$n" "$API/sub/users-state?token=$T" "$API/pub/users-state" "$GWPID"
		stop "$GWPID"
	done
done
say ""
fi

# ---------------------------------------------------------------- 4. microbenchmarks
if part 4; then
echo "4. microbenchmarks" >&2
say "## 4. Go microbenchmarks (go test -bench -benchmem -benchtime $BENCHTIME)"
say ""
say "| benchmark | ns/op | B/op | allocs/op |"
say "|---|---:|---:|---:|"
go test -run '^$' -bench . -benchmem -benchtime "$BENCHTIME" \
	./caddymodule/internal/token/ ./caddymodule/internal/users/ ./internal/sipdigest/ \
	./sipsidecar/internal/digest/ ./sipsidecar/internal/location/ ./sipsidecar/internal/sipserver/ ./caddymodule/internal/store/ 2>/dev/null |
	awk '/^Benchmark/ { ns = b = a = "";
		for (i = 2; i < NF; i++) { if ($(i+1) == "ns/op") ns = $i; if ($(i+1) == "B/op") b = $i; if ($(i+1) == "allocs/op") a = $i }
		printf "| %s | %s | %s | %s |\n", $1, ns, b, a }' >>"$RES"
say ""
fi

# ---------------------------------------------------------------- commands
# The exact command lines behind the tables, with this run's values (ports are free loopback
# ports picked per run, tokens are user 1000's access token from a login).
APIPATH=/pbxcore/api/module-softphone-backend/v1
{
	echo "## Commands"
	echo ""
	echo "Servers and their configuration are set up by \`bench/run.sh\` (the gateway's Caddyfile is its \`gateway\` function); the"
	echo "load generators run as follows."
	echo ""
	if part 1; then
		echo "- Token checks, each route: \`wrk -t2 -c$WRK_CONN -d${DUR}s --latency -H 'Authorization: Bearer <access token>' http://127.0.0.1:<port><route>\`,"
		echo "  routes \`$APIPATH/respond-ceiling\`, \`/file/rec.wav\`, \`$APIPATH/check-media-access\`, \`/guard/rec.wav\`,"
		echo "  \`/fal/rec.wav\`, \`/fa/rec.wav\`, \`/far/rec.wav\` (a 4 KiB file), $HTTP_ROUNDS rounds in that order, the best run of each route kept."
	fi
	if part 2; then
		echo "- SIP, each step: \`sipp 127.0.0.1:<port> -sf sipsidecar/testdata/register-auth.xml -inf users.csv -i 127.0.0.1 -p <port> -r <rate> -m <rate×$SIP_SECS> -l <rate×2> -nostdin -timeout $((SIP_SECS * 4 + 10))s -timeout_error -max_socket 2000 -buff_size 4194304 -trace_err -error_file sipp-errors.log\`;"
		echo "  Kamailio: \`kamailio -f bench/kamailio.cfg -DD -E -m 256 -M 16\`; the sidecar: \`bin/sipsidecar\` with"
		echo "  \`SIPSIDECAR_AUTH_HOOK_URL=<gateway>$APIPATH/sip/auth SIPSIDECAR_REALM=softphone SIPSIDECAR_DIGEST_ALGORITHMS=MD5 SIPSIDECAR_RATE_LIMIT=1000000 SIPSIDECAR_RATE_BURST=1000000\`"
		echo "  (and \`SIPSIDECAR_REDIS_URL\` for the Redis row)."
	fi
	if part 3; then
		echo "- Fan-out, each row: \`bin/fanout -sub <subscribe URL> -pub <publish URL> -n <N> -mode longpoll|eventsource -pid <server pid> -timeout 30s\`."
	fi
	if part 4; then
		echo "- Microbenchmarks: \`go test -run '^\$' -bench . -benchmem -benchtime $BENCHTIME ./caddymodule/internal/token/ ./caddymodule/internal/users/ ./internal/sipdigest/ ./sipsidecar/internal/digest/ ./sipsidecar/internal/location/ ./sipsidecar/internal/sipserver/ ./caddymodule/internal/store/\`."
	fi
	echo ""
} >>"$RES"

# ---------------------------------------------------------------- write
{
	echo "# softphone-gateway benchmark results"
	echo ""
	echo "Measured $(date -u '+%Y-%m-%d %H:%M UTC') on $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'))"
	echo "with $(go version | cut -d' ' -f3), $(nginx -v 2>&1 | cut -d' ' -f3), $(kamailio -v | head -1 | cut -d' ' -f2-3), $(redis-server --version | cut -d' ' -f3), SIPp $(sipp -v 2>&1 | grep -o 'v[0-9.]*' | head -1), wrk."
	echo "Every load generator runs on the same machine as the servers it loads, and is the same for both sides"
	echo "of each comparison. Reproduce with \`make bench\` (or \`bench/run.sh\`); \`bench/run.sh --smoke\` is the"
	echo "one-second version \`make test\` runs.$([ "$SMOKE" = 1 ] && echo ' **This file is a smoke run: its numbers are not measurements.**')"
	echo ""
	cat "$RES"
} >"$OUT"
python3 bench/targets.py "$OUT"
echo "wrote $OUT" >&2
