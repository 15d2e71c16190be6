package sipserver

import (
	"context"
	"log/slog"
	"strings"
)

// redacting is the log handler sipgo's transport layer gets: it writes what sipgo logs
// except what may hold a secret. sipgo logs a stream message it cannot parse whole, as
// "data" (a REGISTER's digest response and nonce among it), and the headers of a WebSocket
// upgrade, each under its own name (a bearer token or cookie among them). A message
// becomes its size, a secret header "[redacted]".
type redacting struct{ h slog.Handler }

func (r redacting) Enabled(ctx context.Context, l slog.Level) bool { return r.h.Enabled(ctx, l) }

func (r redacting) Handle(ctx context.Context, rec slog.Record) error {
	out := slog.NewRecord(rec.Time, rec.Level, rec.Message, rec.PC)
	rec.Attrs(func(a slog.Attr) bool {
		out.AddAttrs(redact(a))
		return true
	})
	return r.h.Handle(ctx, out)
}

func (r redacting) WithAttrs(as []slog.Attr) slog.Handler {
	clean := make([]slog.Attr, len(as))
	for i, a := range as {
		clean[i] = redact(a)
	}
	return redacting{r.h.WithAttrs(clean)}
}

func (r redacting) WithGroup(name string) slog.Handler { return redacting{r.h.WithGroup(name)} }

func redact(a slog.Attr) slog.Attr {
	switch k := strings.ToLower(a.Key); k {
	case "data":
		return slog.Int("bytes", len(a.Value.String()))
	case "authorization", "proxy-authorization", "cookie":
		return slog.String(a.Key, "[redacted]")
	}
	return a
}
