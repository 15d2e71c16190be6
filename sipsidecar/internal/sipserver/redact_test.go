package sipserver

import (
	"bytes"
	"log/slog"
	"strings"
	"testing"
)

func TestRedactingDropsWhatMayHoldSecrets(t *testing.T) {
	var out bytes.Buffer
	log := slog.New(redacting{slog.NewTextHandler(&out, &slog.HandlerOptions{Level: slog.LevelDebug})})
	log.With("Cookie", "session=abc").WithGroup("g").Debug("non-websocket header:", "authorization", "Bearer tok", "data", "REGISTER ... response=\"d1g\"", "raddr", "192.0.2.1:5060")
	got := out.String()
	for _, secret := range []string{"session=abc", "Bearer tok", "d1g"} {
		if strings.Contains(got, secret) {
			t.Fatalf("%q reached the log: %s", secret, got)
		}
	}
	for _, kept := range []string{"g.bytes=", "raddr=192.0.2.1:5060", "Cookie=[redacted]", "non-websocket header:"} {
		if !strings.Contains(got, kept) {
			t.Fatalf("%q is missing: %s", kept, got)
		}
	}
}
