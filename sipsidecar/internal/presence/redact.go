package presence

import (
	"errors"
	"net/url"
	"strconv"
	"strings"

	"github.com/softphone-gateway/softphone-gateway/internal/redact"
)

// unparsable stands for a URL that cannot be redacted, being no URL.
const unparsable = "(unparsable URL)"

// redactURL is raw as a log may show it (redact.URL), or unparsable.
func redactURL(raw string) string {
	if s := redact.URL(raw); s != "" {
		return s
	}
	return unparsable
}

// redactError keeps the URL's credentials out of err, which came from building or sending a
// request to raw. A *url.Error repeats its URL in full (net/http masks only the password, and
// not at all when the URL failed to parse), so it becomes its Op, the redacted URL and its
// cause, which is withheld too should it repeat a credential.
func redactError(err error, raw string) error {
	var ue *url.Error
	if !errors.As(err, &ue) {
		return err
	}
	shown := ue.URL
	if shown == "" {
		shown = raw
	}
	cause := ue.Err.Error()
	for _, s := range secrets(raw, ue.URL) {
		if strings.Contains(cause, s) {
			cause = "(cause withheld: it repeats the URL's credentials)"
			break
		}
	}
	return &urlError{op: ue.Op, url: redactURL(shown), cause: cause, err: ue.Err}
}

// secrets lists the parts of the URLs that must not be logged. Parts shorter than four bytes
// are left out: they turn up in ordinary messages by chance, and are no secret anyway.
func secrets(urls ...string) []string {
	var out []string
	add := func(s string) {
		if len(s) >= 4 {
			out = append(out, s)
		}
	}
	for _, raw := range urls {
		add(raw)
		u, err := url.Parse(raw)
		if err != nil {
			continue
		}
		if u.User != nil {
			add(u.User.String()) // the username alone when it is the credential (https://token@host)
			p, _ := u.User.Password()
			add(p)
		}
		add(u.RawQuery)
		for _, vs := range u.Query() {
			for _, v := range vs {
				add(v)
			}
		}
		add(u.Fragment)
	}
	return out
}

// urlError is a *url.Error told with a redacted URL. Unwrap still reaches the cause, so that
// errors.Is(err, context.DeadlineExceeded) holds as before.
type urlError struct {
	op, url, cause string
	err            error
}

func (e *urlError) Error() string {
	u := e.url
	if u != unparsable {
		u = strconv.Quote(u) // as *url.Error has it
	}
	return e.op + " " + u + ": " + e.cause
}

func (e *urlError) Unwrap() error { return e.err }
