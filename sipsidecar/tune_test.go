package main

import (
	"runtime"
	"runtime/debug"
	"testing"

	"github.com/softphone-gateway/softphone-gateway/sipsidecar/internal/config"
)

func TestTune(t *testing.T) {
	procs, gc := runtime.GOMAXPROCS(0), debug.SetGCPercent(100)
	t.Cleanup(func() { runtime.GOMAXPROCS(procs); debug.SetGCPercent(gc) })
	noEnv := func(string) string { return "" }

	tune(&config.Config{Procs: 1}, noEnv)
	if got := runtime.GOMAXPROCS(0); got != 1 {
		t.Fatalf("SIPSIDECAR_PROCS=1: GOMAXPROCS %d", got)
	}
	if got := debug.SetGCPercent(100); got != 200 {
		t.Fatalf("GOGC unset: %d, want 200", got)
	}
	runtime.GOMAXPROCS(3)
	tune(&config.Config{Procs: 0}, func(k string) string {
		if k == "GOGC" {
			return "50"
		}
		return ""
	})
	if got := runtime.GOMAXPROCS(0); got != 3 {
		t.Fatalf("SIPSIDECAR_PROCS=0 changed GOMAXPROCS to %d", got)
	}
	if got := debug.SetGCPercent(100); got != 100 {
		t.Fatalf("GOGC set in the environment was overridden: %d", got)
	}
}
