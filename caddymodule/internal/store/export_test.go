package store

import "github.com/redis/go-redis/v9"

// NewRedisUnmirrored is the Redis store without its mirror: every check asks Redis, the
// path a mirrored store falls back to whenever it cannot vouch.
func NewRedisUnmirrored(c redis.UniversalClient, prefix string) *Redis { return newRedis(c, prefix) }

// SetMirrorCap replaces maxEntries for r's mirror, so that a test can reach the cap.
func SetMirrorCap(r *Redis, n int64) { r.m.cap.Store(n) }

// Resync asks r's mirror for the reload it otherwise makes every resyncEvery.
func Resync(r *Redis) { r.m.requestSync() }
