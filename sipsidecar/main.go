// Command sipsidecar is the SIP registrar: REGISTER and OPTIONS over UDP, TCP and WebSocket,
// digest authentication decided by an HTTP callback, bindings in memory or Redis, and
// registration changes published as users-state snapshots and locator webhooks.
//
// Configuration is SIPSIDECAR_* environment variables, overridden by flags of the same name
// (sipsidecar -h lists them).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"runtime"
	"runtime/debug"
	"syscall"

	"github.com/softphone-gateway/softphone-gateway/sipsidecar/internal/config"
)

func main() {
	cfg, err := config.Load(os.Getenv, os.Args[1:])
	if errors.Is(err, flag.ErrHelp) {
		fmt.Fprint(os.Stderr, "\nEnvironment (flags of the same name override):\n", config.Usage())
		os.Exit(0)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "sipsidecar:", err)
		os.Exit(2)
	}
	tune(cfg, os.Getenv)
	var level slog.Level
	_ = level.UnmarshalText([]byte(cfg.LogLevel))
	log := slog.New(slog.NewJSONHandler(os.Stderr, &slog.HandlerOptions{Level: level}))

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, cfg, log, nil); err != nil {
		log.Error("sipsidecar stopped", "err", err)
		os.Exit(1)
	}
	log.Info("sipsidecar stopped")
}

// tune sets the runtime for a registrar.
func tune(cfg *config.Config, getenv func(string) string) {
	// A registrar allocates little per request but keeps UDP transactions for 32 s (Timer J);
	// collecting half as often costs memory (plenty) and saves CPU (the scarce part).
	// GOGC in the environment still decides.
	if getenv("GOGC") == "" {
		debug.SetGCPercent(200)
	}
	// One P by default: on a few cores shared with the gateway, Redis and the phones' other
	// servers, a second one cost the sidecar 13–17% more CPU per registration in handing
	// work between threads (futex wake-ups, idle threads spinning for work), and one core
	// carries about 28,000 REGISTERs/s here (bench/README.md).
	if cfg.Procs > 0 {
		runtime.GOMAXPROCS(cfg.Procs)
	}
}
