// Command caddy is the softphone-gateway build of Caddy: the standard modules plus ours.
// It is the program xcaddy would generate for
// `xcaddy build --with github.com/softphone-gateway/softphone-gateway/caddymodule=.`.
package main

import (
	caddycmd "github.com/caddyserver/caddy/v2/cmd"

	_ "github.com/caddyserver/caddy/v2/modules/standard"

	_ "github.com/softphone-gateway/softphone-gateway/caddymodule"
)

func main() {
	caddycmd.Main()
}
