package caddymodule

import (
	"io"
	"net/http"
	"strconv"
	"time"

	"go.uber.org/zap"

	"github.com/softphone-gateway/softphone-gateway/caddymodule/internal/seclog"
)

// logoutAll is the operator's "log out everywhere" for one user: every session issued until
// now dies on every gateway sharing the store, and this gateway's streams of that user are
// cut. Only loopback peers may call it:
//
//	curl -X POST http://127.0.0.1:8088{prefix}/admin/logout-all -d '{"username":"201"}'
//
// (or {"user_id": 7} for a user no longer in the user store).
func (a *API) logoutAll(w http.ResponseWriter, r *http.Request) error {
	app, now := a.app, a.app.now()
	if !loopbackPeer(r) {
		writeError(w, http.StatusForbidden, msgForbidden, now)
		return nil
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, 4<<10))
	if err != nil {
		bodyError(w, err, now)
		return nil
	}
	var req struct {
		Username string `json:"username"`
		UserID   int64  `json:"user_id"`
	}
	if err := decodeStrictJSON(body, &req); err != nil || (req.Username == "") == (req.UserID == 0) || req.UserID < 0 {
		writeError(w, http.StatusBadRequest, msgBadRequest, now)
		return nil
	}
	sub, name := strconv.FormatInt(req.UserID, 10), req.Username
	if req.Username != "" {
		u, err := app.lookupUser(r.Context(), req.Username)
		if err != nil {
			writeError(w, http.StatusServiceUnavailable, msgUnavailable, now)
			return nil
		}
		if u == nil {
			writeError(w, http.StatusNotFound, "Unknown user", now)
			return nil
		}
		sub = u.IDString()
	}
	until := now.Add(app.issuer.RefreshTTL() + time.Duration(app.Leeway))
	if err := app.store.RevokeUser(r.Context(), sub, now, until); err != nil {
		a.logger.Error("revoking user sessions", zap.Error(err))
		writeError(w, http.StatusServiceUnavailable, msgUnavailable, now)
		return nil
	}
	live.cutUser(sub)
	if name == "" {
		name = "id " + sub
	}
	app.event(seclog.Logout, "All sessions of user "+name+" revoked by an operator", clientIP(r))
	writeJSON(w, http.StatusOK, struct {
		Success bool   `json:"success"`
		Message string `json:"message"`
	}{true, "All sessions revoked"})
	return nil
}
