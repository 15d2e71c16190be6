package testenv

// The project's chosen dependencies, pinned here until the packages that use them land, so
// that `go mod tidy` keeps them in go.mod while several people work in parallel.
import (
	_ "github.com/emiago/sipgo"
	_ "github.com/golang-jwt/jwt/v5"
	_ "github.com/prometheus/client_golang/prometheus"
	_ "github.com/redis/go-redis/v9"
)
