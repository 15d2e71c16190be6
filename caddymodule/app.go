// Package caddymodule is the Caddy side of softphone-gateway: the `softphone` app (keys,
// users, state, security log) and the `softphone_api` and `softphone_guard` HTTP handlers.
// It is a thin adapter over the plain packages in internal/.
package caddymodule

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"time"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"

	"github.com/softphone-gateway/softphone-gateway/caddymodule/internal/seclog"
	"github.com/softphone-gateway/softphone-gateway/caddymodule/internal/store"
	"github.com/softphone-gateway/softphone-gateway/caddymodule/internal/token"
	"github.com/softphone-gateway/softphone-gateway/caddymodule/internal/users"
)

func init() {
	caddy.RegisterModule(App{})
}

// App is the `softphone` app: what every softphone route shares. Handlers find it with
// ctx.App("softphone"); when the config has no `softphone` block it runs on its defaults.
type App struct {
	// Folder for secret.key and security.log. Default: Caddy's data folder + "/softphone".
	DataDir string `json:"data_dir,omitempty"`
	// Signing key file. Default: data_dir/secret.key (created when absent).
	KeyFile string `json:"key_file,omitempty"`
	// Access-token lifetime. Default 1h (the PHP module's 3600 s).
	AccessTTL caddy.Duration `json:"access_ttl,omitempty"`
	// Refresh-token lifetime. Default 720h (30 days).
	RefreshTTL caddy.Duration `json:"refresh_ttl,omitempty"`
	// Clock skew tolerated on exp and iat. Default 10s.
	Leeway caddy.Duration `json:"leeway,omitempty"`
	// Digest realm used to check logins of users stored as ha1 / ha1_sha256. Default "softphone".
	Realm string `json:"realm,omitempty"`
	// User backends, asked in order; the first that knows a user answers.
	UsersRaw []json.RawMessage `json:"users,omitempty" caddy:"namespace=softphone.users inline_key=backend"`
	// State store (revocations, refresh families, throttling). Default: memory, journaled
	// to data_dir/state.journal.
	Store *StoreConfig `json:"store,omitempty"`
	// Refresh-token rotation (RFC 9700 §4.14). Absent: off, as the MikoPBX apps expect
	// (they keep reusing their refresh token).
	RefreshRotation *RotationConfig `json:"refresh_rotation,omitempty"`
	// Security log file. Default: data_dir/security.log, 10 MiB, 5 kept.
	SecurityLog *SecurityLogConfig `json:"security_log,omitempty"`
	// Login throttling. Default: 5 failures per username and address in 15 minutes.
	LoginThrottle *ThrottleConfig `json:"login_throttle,omitempty"`
	// The SIP digest callback. Default: loopback callers only, unsigned.
	SIPAuth *SIPAuthConfig `json:"sip_auth,omitempty"`
	// Pub/sub channels (users-state …). Default: the embedded broker.
	PubSub *PubSubConfig `json:"pubsub,omitempty"`

	issuer   *token.Issuer
	users    users.Chain
	store    store.Store
	pubsub   *pubsub
	storeKey string // the store's place in storePool
	seclog   *seclog.Log
	logger   *zap.Logger
	debug    bool // logger takes debug lines (decided at Provision, as the logger is)
	now      func() time.Time
}

// SecurityLogConfig places and rotates the security log.
type SecurityLogConfig struct {
	// File path. Default data_dir/security.log.
	Path string `json:"path,omitempty"`
	// Rotate when the file would pass this many bytes. Default 10 MiB.
	MaxSize int64 `json:"max_size,omitempty"`
	// Rotated files kept. Default 5.
	Keep int `json:"keep,omitempty"`
	// Disable the file (the events still go to Caddy's log).
	Disabled bool `json:"disabled,omitempty"`
}

// ThrottleConfig limits password guessing.
type ThrottleConfig struct {
	// Failures allowed for one username from one address within Window. Default 5.
	MaxFailures int `json:"max_failures,omitempty"`
	// Failures allowed from one address across all usernames within Window. Default 20.
	MaxFailuresPerAddress int `json:"max_failures_per_address,omitempty"`
	// Window length; it starts at the first failure. Default 15m.
	Window caddy.Duration `json:"window,omitempty"`
}

// UserBackend is what a `softphone.users.*` module provides.
type UserBackend interface {
	users.Backend
}

// RotationConfig turns refresh-token rotation on.
type RotationConfig struct {
	// How long after a rotation the previous refresh token still gets the same new pair
	// (two requests racing from one app are not an attack). Default 30s.
	Grace caddy.Duration `json:"grace,omitempty"`
}

// CaddyModule returns the Caddy module information.
func (App) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{ID: "softphone", New: func() caddy.Module { return new(App) }}
}

// Provision sets defaults, loads the key, the users, the store and opens the security log.
func (a *App) Provision(ctx caddy.Context) error {
	a.logger = ctx.Logger()
	a.debug = a.logger.Core().Enabled(zap.DebugLevel)
	if a.now == nil {
		a.now = time.Now
	}
	if a.DataDir == "" {
		a.DataDir = filepath.Join(caddy.AppDataDir(), "softphone")
	}
	if a.KeyFile == "" {
		a.KeyFile = filepath.Join(a.DataDir, "secret.key")
	}
	if a.Realm == "" {
		a.Realm = "softphone"
	}
	if a.Leeway == 0 {
		a.Leeway = caddy.Duration(10 * time.Second)
	}
	if a.LoginThrottle == nil {
		a.LoginThrottle = &ThrottleConfig{}
	}
	if a.LoginThrottle.MaxFailures == 0 {
		a.LoginThrottle.MaxFailures = 5
	}
	if a.LoginThrottle.MaxFailuresPerAddress == 0 {
		a.LoginThrottle.MaxFailuresPerAddress = 20
	}
	if a.LoginThrottle.Window == 0 {
		a.LoginThrottle.Window = caddy.Duration(15 * time.Minute)
	}
	if a.SIPAuth == nil {
		a.SIPAuth = &SIPAuthConfig{}
	}
	if a.PubSub == nil {
		a.PubSub = &PubSubConfig{}
	}
	a.PubSub.defaults()
	if a.SecurityLog == nil {
		a.SecurityLog = &SecurityLogConfig{}
	}
	if a.SecurityLog.Path == "" {
		a.SecurityLog.Path = filepath.Join(a.DataDir, "security.log")
	}

	if err := registerMetrics(ctx.GetMetricsRegistry()); err != nil {
		return fmt.Errorf("registering metrics: %w", err)
	}

	key, err := token.LoadOrCreateKey(a.KeyFile)
	if err != nil {
		return fmt.Errorf("loading signing key: %w", err)
	}
	a.issuer, err = token.NewIssuer(key, token.Options{
		AccessTTL:  time.Duration(a.AccessTTL),
		RefreshTTL: time.Duration(a.RefreshTTL),
		Leeway:     time.Duration(a.Leeway),
		Now:        a.now,
	})
	if err != nil {
		return fmt.Errorf("preparing tokens: %w", err)
	}

	mods, err := ctx.LoadModule(a, "UsersRaw")
	if err != nil {
		return fmt.Errorf("loading user backends: %w", err)
	}
	for _, m := range mods.([]any) {
		a.users = append(a.users, m.(UserBackend))
	}
	if len(a.users) == 0 {
		a.logger.Warn("no user backends configured: every login will fail")
	}

	if a.Store == nil {
		a.Store = &StoreConfig{}
	}
	if a.RefreshRotation != nil && a.RefreshRotation.Grace == 0 {
		a.RefreshRotation.Grace = caddy.Duration(30 * time.Second)
	}
	a.store, a.storeKey, err = a.Store.open(a.DataDir)
	if err != nil {
		return fmt.Errorf("opening state store: %w", err)
	}
	if a.Store.Engine == "redis" {
		// Only a Redis store has a mirror: a memory store would read as a mirror down.
		if err := registerMetrics(ctx.GetMetricsRegistry(), metrics.mirrorLive); err != nil {
			return fmt.Errorf("registering metrics: %w", err)
		}
	}

	if err := a.PubSub.validate(); err != nil {
		return err
	}
	a.pubsub, err = a.PubSub.open(a.logger)
	if err != nil {
		return err
	}

	if !a.SecurityLog.Disabled {
		a.seclog, err = seclog.Open(a.SecurityLog.Path, a.SecurityLog.MaxSize, a.SecurityLog.Keep)
		if err != nil {
			return err
		}
	}
	return nil
}

// Validate rejects settings that cannot work.
func (a *App) Validate() error {
	if a.AccessTTL < 0 || a.RefreshTTL < 0 || a.Leeway < 0 {
		return errors.New("softphone: lifetimes and leeway must not be negative")
	}
	if time.Duration(a.Leeway) > 5*time.Minute {
		return errors.New("softphone: leeway above 5m would keep expired tokens alive")
	}
	if a.AccessTTL != 0 && a.RefreshTTL != 0 && a.RefreshTTL < a.AccessTTL {
		return errors.New("softphone: refresh_ttl must not be shorter than access_ttl")
	}
	if a.SIPAuth.AllowRemote && a.SIPAuth.Secret == "" {
		return errors.New("softphone: sip_auth allow_remote needs a secret")
	}
	if a.SIPAuth.Secret != "" && len(a.SIPAuth.Secret) < 16 {
		return errors.New("softphone: sip_auth secret must be at least 16 characters")
	}
	if err := a.Store.validate(); err != nil {
		return err
	}
	if a.LoginThrottle.MaxFailures < 1 || a.LoginThrottle.MaxFailuresPerAddress < 1 || a.LoginThrottle.Window <= 0 {
		return errors.New("softphone: login_throttle needs max_failures ≥ 1 and a positive window")
	}
	return nil
}

// Start implements caddy.App.
func (a *App) Start() error { return nil }

// Stop implements caddy.App.
func (a *App) Stop() error { return nil }

// Cleanup releases what Provision took.
func (a *App) Cleanup() error {
	var errs []error
	if a.storeKey != "" {
		_, err := storePool.Delete(a.storeKey)
		errs = append(errs, err)
	}
	if a.pubsub != nil {
		_, err := pubsubPool.Delete(a.PubSub.poolKey())
		errs = append(errs, err)
	}
	if a.seclog != nil {
		errs = append(errs, a.seclog.Close())
	}
	return errors.Join(errs...)
}

// event writes one security event to the security log and to Caddy's log.
func (a *App) event(ev seclog.Event, message, from string) {
	if a.seclog != nil {
		if err := a.seclog.Write(ev, message, from, a.now()); err != nil {
			a.logger.Error("writing security log", zap.Error(err))
		}
	}
	// Denials are warnings; logins and logouts are news; a granted media request is routine
	// (one per audio chunk) and goes to Caddy's log only at debug level.
	level := zap.InfoLevel
	switch ev {
	case seclog.AuthFailed, seclog.MediaAccessDenied, seclog.NchanSubAccessDenied:
		level = zap.WarnLevel
	case seclog.MediaAccessGranted:
		// One per audio chunk: not even asked of the logger unless it takes debug lines
		// (zap's Check through Caddy's cores was 1.8% of check-media-access's CPU).
		if !a.debug {
			return
		}
		level = zap.DebugLevel
	}
	if ce := a.logger.Check(level, "security event"); ce != nil {
		ce.Write(zap.String("event", string(ev)), zap.String("message", message), zap.String("from", from))
	}
}

// lookupUser asks the backends; a nil user with a nil error means unknown.
func (a *App) lookupUser(ctx context.Context, username string) (*users.User, error) {
	u, err := a.users.Lookup(ctx, username)
	if errors.Is(err, users.ErrNotFound) {
		return nil, nil
	}
	return u, err
}

// Interface guards
var (
	_ caddy.App          = (*App)(nil)
	_ caddy.Provisioner  = (*App)(nil)
	_ caddy.Validator    = (*App)(nil)
	_ caddy.CleanerUpper = (*App)(nil)
)
