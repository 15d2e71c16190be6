// Package ops serves the sidecar's operator endpoints: /metrics, /healthz, /readyz,
// GET /locations/{aor} and /debug/pprof/. Bind it to loopback or a management network: it
// shows bindings.
package ops

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/pprof"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/softphone-gateway/softphone-gateway/sipsidecar/internal/location"
)

// Handler returns the operator mux.
func Handler(reg *prometheus.Registry, store location.Store, now func() time.Time) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}))
	// Go's profiler, for operators on this (loopback by default) port.
	mux.HandleFunc("GET /debug/pprof/", pprof.Index)
	mux.HandleFunc("GET /debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("GET /debug/pprof/trace", pprof.Trace)
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
		defer cancel()
		if err := store.Ping(ctx); err != nil {
			writeJSON(w, http.StatusServiceUnavailable, map[string]string{"status": "store unavailable"})
			return
		}
		writeJSON(w, http.StatusOK, map[string]string{"status": "ready"})
	})
	mux.HandleFunc("GET /locations/{aor}", func(w http.ResponseWriter, r *http.Request) {
		aor := r.PathValue("aor")
		aor = strings.TrimPrefix(strings.TrimPrefix(aor, "sip:"), "sips:")
		user, host, ok := strings.Cut(aor, "@")
		if !ok || user == "" || host == "" || len(aor) > 256 || strings.ContainsAny(aor, " \t\r\n\"<>") {
			writeJSON(w, http.StatusBadRequest, map[string]string{"error": "want /locations/user@domain"})
			return
		}
		aor = user + "@" + strings.ToLower(host)
		bs, err := store.Lookup(r.Context(), aor, now())
		if err != nil {
			writeJSON(w, http.StatusServiceUnavailable, map[string]string{"error": "store unavailable"})
			return
		}
		if len(bs) == 0 {
			writeJSON(w, http.StatusNotFound, map[string]any{"aor": aor, "bindings": []location.Binding{}})
			return
		}
		writeJSON(w, http.StatusOK, map[string]any{"aor": aor, "bindings": bs})
	})
	return mux
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(v)
}
