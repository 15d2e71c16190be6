// Package softphonegateway lets xcaddy build our Caddy from the module root:
//
//	xcaddy build --with github.com/softphone-gateway/softphone-gateway=.
//
// Importing it registers the caddymodule package's modules; the programs themselves live in
// cmd/caddy and sipsidecar.
package softphonegateway

import _ "github.com/softphone-gateway/softphone-gateway/caddymodule"
