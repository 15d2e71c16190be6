package store_test

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/softphone-gateway/softphone-gateway/caddymodule/internal/store"
)

// A logged-out token must never come back to life: the journal carries revocations,
// logouts-everywhere and families across a restart.
func TestJournalSurvivesRestart(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "state.journal")
	m, err := store.OpenMemory(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	m.RevokeSession(ctx, "sid-1", now.Add(time.Hour))
	m.RevokeSession(ctx, "sid-expired", now.Add(-time.Second))
	m.RevokeUser(ctx, "7", now, now.Add(time.Hour))
	m.Rotate(ctx, "fam-1", "j0", "j1", now, time.Second, now.Add(time.Hour))
	m.AddFailure(ctx, "throttle", time.Hour)
	m.Close()

	m2, err := store.OpenMemory(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer m2.Close()
	if rev, _ := m2.SessionRevoked(ctx, "sid-1"); !rev {
		t.Fatal("session revocation lost across restart")
	}
	if rev, _ := m2.Revoked(ctx, "s", "7", now.Add(-time.Minute)); !rev {
		t.Fatal("logout-everywhere lost across restart")
	}
	if r, _ := m2.Rotate(ctx, "fam-1", "j0", "j1", now.Add(time.Minute), time.Second, now.Add(time.Hour)); r.Outcome != store.Reused {
		t.Fatalf("family lost across restart: %+v", r)
	}
	if n, _, _ := m2.Failures(ctx, "throttle"); n != 0 {
		t.Fatal("throttle counters are not meant to persist")
	}
	b, _ := os.ReadFile(path)
	if strings.Contains(string(b), "sid-expired") {
		t.Fatal("compaction kept an expired record")
	}
	if st, _ := os.Stat(path); st.Mode().Perm() != 0o600 {
		t.Fatalf("journal mode %v", st.Mode().Perm())
	}
}

func TestJournalTornLastLineIsTolerated(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state.journal")
	until := time.Now().Add(time.Hour).UnixMilli()
	good := `{"op":"revoke","key":"sid-1","until":` + itoa(until) + "}\n"
	os.WriteFile(path, []byte(good+`{"op":"revo`), 0o600)
	m, err := store.OpenMemory(path, nil)
	if err != nil {
		t.Fatalf("torn last line refused: %v", err)
	}
	defer m.Close()
	if rev, _ := m.SessionRevoked(context.Background(), "sid-1"); !rev {
		t.Fatal("records before the torn line lost")
	}
}

func TestJournalCorruptMiddleIsRefused(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state.journal")
	until := time.Now().Add(time.Hour).UnixMilli()
	good := `{"op":"revoke","key":"sid-1","until":` + itoa(until) + "}\n"
	os.WriteFile(path, []byte("garbage\n"+good), 0o600)
	if _, err := store.OpenMemory(path, nil); err == nil {
		t.Fatal("a corrupt journal was accepted: revocations could silently be lost")
	}
}

func itoa(n int64) string { return strconv.FormatInt(n, 10) }
