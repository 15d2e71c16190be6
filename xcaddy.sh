#!/bin/sh
# Builds our Caddy into ${1:-bin/caddy}: with xcaddy when it is installed, otherwise with
# `go build ./cmd/caddy` (the same program xcaddy generates). Either way it then checks that
# the binary lists our modules.
set -eu
out=${1:-bin/caddy}
cd "$(dirname "$0")"
mkdir -p "$(dirname "$out")"
if command -v xcaddy >/dev/null 2>&1; then
	caddy_version=$(go list -m -f '{{.Version}}' github.com/caddyserver/caddy/v2)
	echo "building $out with xcaddy (caddy $caddy_version)"
	CADDY_VERSION=$caddy_version xcaddy build "$caddy_version" \
		--output "$out" \
		--with github.com/softphone-gateway/softphone-gateway=.
else
	echo "xcaddy not installed: building $out with go build ./cmd/caddy"
	go build -o "$out" ./cmd/caddy
fi
modules=$("$out" list-modules)
for m in softphone http.handlers.softphone_api http.handlers.softphone_guard http.reverse_proxy.transport.softphone softphone.users.file softphone.users.inline; do
	if ! printf '%s\n' "$modules" | grep -qx "$m"; then
		echo "error: $out does not list module $m" >&2
		exit 1
	fi
done
echo "$out lists the softphone modules"
