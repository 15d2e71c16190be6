package caddymodule

import (
	"context"
	"fmt"

	"github.com/caddyserver/caddy/v2"

	"github.com/softphone-gateway/softphone-gateway/caddymodule/internal/users"
)

func init() {
	caddy.RegisterModule(FileUsers{})
	caddy.RegisterModule(InlineUsers{})
}

// FileUsers (`softphone.users.file`) reads users from a JSON file: an array of
// {"id","username","password"|"ha1"|"ha1_sha256","display_name","role","enabled"}.
// The file is read when the config loads; `caddy reload` picks up edits.
type FileUsers struct {
	// Path of the JSON file.
	Path string `json:"path,omitempty"`

	users *users.Static
}

// CaddyModule returns the Caddy module information.
func (FileUsers) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{ID: "softphone.users.file", New: func() caddy.Module { return new(FileUsers) }}
}

// Provision loads the file.
func (f *FileUsers) Provision(caddy.Context) error {
	if f.Path == "" {
		return fmt.Errorf("users file: path is required")
	}
	var err error
	f.users, err = users.LoadFile(f.Path)
	return err
}

// Lookup implements users.Backend.
func (f *FileUsers) Lookup(ctx context.Context, username string) (*users.User, error) {
	return f.users.Lookup(ctx, username)
}

// InlineUsers (`softphone.users.inline`) holds users written in the config itself.
type InlineUsers struct {
	// The users, in the same form as the JSON file.
	Users []users.User `json:"users,omitempty"`

	users *users.Static
}

// CaddyModule returns the Caddy module information.
func (InlineUsers) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{ID: "softphone.users.inline", New: func() caddy.Module { return new(InlineUsers) }}
}

// Provision validates and indexes the users.
func (in *InlineUsers) Provision(caddy.Context) error {
	var err error
	in.users, err = users.NewStatic(in.Users)
	if err != nil {
		return fmt.Errorf("inline users: %w", err)
	}
	return nil
}

// Lookup implements users.Backend.
func (in *InlineUsers) Lookup(ctx context.Context, username string) (*users.User, error) {
	return in.users.Lookup(ctx, username)
}

// Interface guards
var (
	_ caddy.Provisioner = (*FileUsers)(nil)
	_ UserBackend       = (*FileUsers)(nil)
	_ caddy.Provisioner = (*InlineUsers)(nil)
	_ UserBackend       = (*InlineUsers)(nil)
)
