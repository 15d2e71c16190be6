package users

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/softphone-gateway/softphone-gateway/internal/sipdigest"
)

func TestCheckPassword(t *testing.T) {
	plain := &User{ID: 1, Username: "201", Password: "s3cret"}
	ha1 := &User{ID: 2, Username: "202", HA1: sipdigest.HA1(sipdigest.MD5, "202", "pbx", "s3cret")}
	ha1sha := &User{ID: 3, Username: "203", HA1SHA256: strings.ToUpper(sipdigest.HA1(sipdigest.SHA256, "203", "pbx", "s3cret"))}
	cases := []struct {
		name     string
		u        *User
		password string
		realm    string
		want     bool
	}{
		{"plain, right", plain, "s3cret", "pbx", true},
		{"plain, wrong", plain, "s3cre", "pbx", false},
		{"plain, empty", plain, "", "pbx", false},
		{"ha1, right", ha1, "s3cret", "pbx", true},
		{"ha1, wrong", ha1, "nope", "pbx", false},
		{"ha1, another realm", ha1, "s3cret", "other", false},
		{"ha1_sha256 (upper-case hex), right", ha1sha, "s3cret", "pbx", true},
		{"ha1_sha256, wrong", ha1sha, "x", "pbx", false},
		{"unknown user", nil, "decoy-secret-never-matches", "pbx", false},
	}
	for _, c := range cases {
		if got := CheckPassword(c.u, c.password, c.realm); got != c.want {
			t.Errorf("%s: %v", c.name, got)
		}
	}
}

func TestHA1For(t *testing.T) {
	plain := &User{Username: "201", Password: "pw"}
	if h, ok := plain.HA1For(sipdigest.SHA256, "r"); !ok || h != sipdigest.HA1(sipdigest.SHA256, "201", "r", "pw") {
		t.Fatal("plain user, SHA-256")
	}
	md5only := &User{Username: "202", HA1: "0123456789ABCDEF0123456789ABCDEF"}
	if h, ok := md5only.HA1For("md5", "r"); !ok || h != "0123456789abcdef0123456789abcdef" {
		t.Fatalf("stored HA1: %q %v", h, ok)
	}
	if _, ok := md5only.HA1For(sipdigest.SHA256, "r"); ok {
		t.Fatal("an MD5-only user answered SHA-256")
	}
}

func TestValidate(t *testing.T) {
	bad := map[string]User{
		"empty username":   {ID: 1, Password: "x"},
		"long username":    {ID: 1, Username: strings.Repeat("1", 65), Password: "x"},
		"colon":            {ID: 1, Username: "a:b", Password: "x"},
		"at":               {ID: 1, Username: "a@b", Password: "x"},
		"zero id":          {Username: "a", Password: "x"},
		"negative id":      {ID: -1, Username: "a", Password: "x"},
		"no secret":        {ID: 1, Username: "a"},
		"short ha1":        {ID: 1, Username: "a", HA1: "abc"},
		"ha1 not hex":      {ID: 1, Username: "a", HA1: strings.Repeat("z", 32)},
		"short ha1_sha256": {ID: 1, Username: "a", HA1SHA256: strings.Repeat("a", 32)},
	}
	for name, u := range bad {
		if err := u.Validate(); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

func writeFile(t *testing.T, body string) string {
	p := filepath.Join(t.TempDir(), "users.json")
	os.WriteFile(p, []byte(body), 0o600)
	return p
}

func TestLoadFile(t *testing.T) {
	for name, body := range map[string]string{
		"array":  `[{"id":1,"username":"201","password":"x"}]`,
		"object": `{"users":[{"id":1,"username":"201","password":"x"}]}`,
	} {
		s, err := LoadFile(writeFile(t, body))
		if err != nil || s.Len() != 1 {
			t.Errorf("%s: %v", name, err)
		}
	}
	for name, body := range map[string]string{
		"typo in a field": `[{"id":1,"username":"201","pasword":"x"}]`,
		"duplicate user":  `[{"id":1,"username":"201","password":"x"},{"id":2,"username":"201","password":"y"}]`,
		"duplicate id":    `[{"id":1,"username":"201","password":"x"},{"id":1,"username":"202","password":"y"}]`,
		"trailing data":   `[{"id":1,"username":"201","password":"x"}] []`,
		"not JSON":        `id=1`,
		"wrong type":      `[{"id":"1","username":"201","password":"x"}]`,
	} {
		if _, err := LoadFile(writeFile(t, body)); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	if _, err := LoadFile(filepath.Join(t.TempDir(), "missing.json")); err == nil {
		t.Error("missing file accepted")
	}
	big := writeFile(t, "")
	os.Truncate(big, MaxFileSize+1)
	if _, err := LoadFile(big); err == nil || !strings.Contains(err.Error(), "larger than") {
		t.Errorf("oversized file: %v", err)
	}
}

func TestDemoUsers(t *testing.T) {
	s, err := LoadFile("../../../examples/users.json")
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	u201, _ := s.Lookup(ctx, "201")
	if !CheckPassword(u201, "b749601f329a635a19c4a87bc359be3d", "softphone") {
		t.Fatal("201 with the documented secret")
	}
	u203, _ := s.Lookup(ctx, "203")
	if u203.Password != "" || !CheckPassword(u203, "demo-secret-203", "softphone") {
		t.Fatal("203 is HA1-only and its secret is demo-secret-203 in realm softphone")
	}
	u204, _ := s.Lookup(ctx, "204")
	if u204.IsEnabled() {
		t.Fatal("204 is the disabled demo user")
	}
}

type failing struct{}

func (failing) Lookup(context.Context, string) (*User, error) {
	return nil, errors.New("database down")
}

func TestChain(t *testing.T) {
	a, _ := NewStatic([]User{{ID: 1, Username: "201", Password: "a"}})
	b, _ := NewStatic([]User{{ID: 2, Username: "201", Password: "b"}, {ID: 3, Username: "202", Password: "c"}})
	ctx := context.Background()
	c := Chain{a, b}
	if u, _ := c.Lookup(ctx, "201"); u.ID != 1 {
		t.Fatal("the first backend that knows a user answers")
	}
	if u, _ := c.Lookup(ctx, "202"); u.ID != 3 {
		t.Fatal("ErrNotFound falls through to the next backend")
	}
	if _, err := c.Lookup(ctx, "999"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("unknown: %v", err)
	}
	if _, err := (Chain{failing{}, b}).Lookup(ctx, "202"); err == nil || errors.Is(err, ErrNotFound) {
		t.Fatalf("a technical failure must stop the chain: %v", err)
	}
}

// An unknown user must cost what a known one does; compare these two (not a timed test).
func BenchmarkCheckPasswordKnown(b *testing.B) {
	u := &User{ID: 1, Username: "201", Password: "s3cret"}
	for b.Loop() {
		CheckPassword(u, "guess", "pbx")
	}
}

func BenchmarkCheckPasswordUnknown(b *testing.B) {
	for b.Loop() {
		CheckPassword(nil, "guess", "pbx")
	}
}
