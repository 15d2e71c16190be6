package presence

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/softphone-gateway/softphone-gateway/internal/testenv"
)

// closedAddr is host:port where nothing listens any more: a POST there fails at once.
func closedAddr(t *testing.T) string {
	t.Helper()
	srv := httptest.NewServer(http.NotFoundHandler())
	addr := srv.Listener.Addr().String()
	srv.Close()
	return addr
}

// failingTransport fails every request with an error that repeats the request's URL, as a
// proxy or a custom dialer may.
type failingTransport struct{}

func (failingTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	return nil, fmt.Errorf("no route for %s", r.URL)
}

// unquote undoes the text handler's escaping of quotes in a logged error.
func unquote(log string) string { return strings.ReplaceAll(log, `\"`, `"`) }

// assertNoSecret fails the test when text holds any of secrets or lacks any of wants.
func assertNoSecret(t *testing.T, what, text string, secrets, wants []string) {
	t.Helper()
	for _, s := range secrets {
		if strings.Contains(text, s) {
			t.Errorf("%s holds the secret %q: %s", what, s, text)
		}
	}
	for _, w := range wants {
		if !strings.Contains(text, w) {
			t.Errorf("%s lacks %q: %s", what, w, text)
		}
	}
}

// An attacker who reads the logs (a log shipper, a support bundle) must not learn the
// credentials of the users-state publisher: net/http's *url.Error repeats the URL, query
// included, and keeps the userinfo's user name.
func TestPublisherKeepsURLCredentialsOutOfErrorsAndLogs(t *testing.T) {
	closed := closedAddr(t)
	redirect := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, "http://"+closed+"/elsewhere?token=R3dir3ct-T0k", http.StatusTemporaryRedirect)
	}))
	defer redirect.Close()
	rejecting := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusInternalServerError)
	}))
	defer rejecting.Close()
	secrets := []string{"PubK3y", "pubuser", "Pub-P4ss", "R3dir3ct-T0k"}
	cases := []struct {
		name      string
		url       string
		transport http.RoundTripper
		wants     []string
		refused   bool // the cause, a refused connection, still reaches errors.As
	}{
		{"query key on a refused connection", "http://" + closed + "/pub/users-state?key=PubK3y", nil,
			[]string{"posting users-state", `Post "http://` + closed + `/pub/users-state?…"`}, true},
		{"userinfo on a refused connection", "http://pubuser:Pub-P4ss@" + closed + "/pub/users-state", nil,
			[]string{"posting users-state", `Post "http://` + closed + `/pub/users-state"`}, true},
		{"query of the redirect target", redirect.URL + "/pub?key=PubK3y", nil,
			[]string{"posting users-state", `Post "http://` + closed + `/elsewhere?…"`}, true},
		{"cause that repeats the URL", "http://pubuser:Pub-P4ss@nchan.invalid/pub?key=PubK3y", failingTransport{},
			[]string{"posting users-state", `Post "http://nchan.invalid/pub?…"`, "cause withheld"}, false},
		{"unparsable URL", "http://pubuser:Pub-P4ss@nchan.invalid/pub\n?key=PubK3y", nil,
			[]string{"building users-state request", "invalid control character"}, false},
		{"status from a URL with credentials", "http://pubuser:Pub-P4ss@" + strings.TrimPrefix(rejecting.URL, "http://") + "/pub?key=PubK3y", nil,
			[]string{"posting users-state: status 500"}, false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var logs testenv.LogBuffer
			p := &Publisher{URL: c.url, Source: &fakeSource{}, Client: &http.Client{Transport: c.transport},
				Logger: slog.New(slog.NewTextHandler(&logs, nil))}
			p.publish(context.Background(), true)
			assertNoSecret(t, "log", unquote(logs.String()), secrets, append([]string{"users-state not published"}, c.wants...))

			err := p.post(context.Background(), []byte(`{}`))
			if err == nil {
				t.Fatal("post succeeded")
			}
			t.Log(err)
			assertNoSecret(t, "error", err.Error(), secrets, c.wants)
			var op *net.OpError
			if c.refused && !errors.As(err, &op) {
				t.Errorf("the cause is lost: %#v", err)
			}
		})
	}
}

// The same attack on the locator webhooks, whose URLs carry Basic credentials or a key.
func TestWebhooksKeepURLCredentialsOutOfErrorsAndLogs(t *testing.T) {
	closed := closedAddr(t)
	rejecting := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusForbidden)
	}))
	defer rejecting.Close()
	secrets := []string{"hookuser", "Hook-P4ss", "K3y-s3cret"}
	cases := []struct {
		name    string
		url     string
		wants   []string
		refused bool
	}{
		{"userinfo and query on a refused connection", "http://hookuser:Hook-P4ss@" + closed + "/loc?key=K3y-s3cret",
			[]string{"posting webhook", `Post "http://` + closed + `/loc?…"`}, true},
		{"status from a URL with credentials", "http://hookuser:Hook-P4ss@" + strings.TrimPrefix(rejecting.URL, "http://") + "/loc?key=K3y-s3cret",
			[]string{"posting to " + rejecting.URL + "/loc?…: status 403"}, false},
		{"unparsable URL", "http://hookuser:Hook-P4ss@hooks.invalid/loc\n?key=K3y-s3cret",
			[]string{"building webhook request", "invalid control character"}, false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var logs testenv.LogBuffer
			w := &Webhooks{URLs: []string{c.url}, Logger: slog.New(slog.NewTextHandler(&logs, nil))}
			w.init()
			w.deliver(context.Background(), Event{Event: "registered"})
			assertNoSecret(t, "log", unquote(logs.String()), secrets, append([]string{"webhook not delivered"}, c.wants...))

			err := w.post(context.Background(), c.url, []byte(`{}`))
			if err == nil {
				t.Fatal("post succeeded")
			}
			t.Log(err)
			assertNoSecret(t, "error", err.Error(), secrets, c.wants)
			var op *net.OpError
			if c.refused && !errors.As(err, &op) {
				t.Errorf("the cause is lost: %#v", err)
			}
		})
	}
}
