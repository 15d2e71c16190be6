package caddymodule

import (
	"fmt"
	"path/filepath"
	"strings"
	"sync"

	"github.com/caddyserver/caddy/v2"
	"github.com/redis/go-redis/v9"

	"github.com/softphone-gateway/softphone-gateway/caddymodule/internal/store"
)

// StoreConfig chooses where the shared security state lives.
type StoreConfig struct {
	// "memory" (default: this process, journaled to disk) or "redis" (shared by gateways).
	Engine string `json:"engine,omitempty"`
	// Redis URL, redis:// or rediss:// (engine redis). Redis 7.0 or newer.
	URL string `json:"url,omitempty"`
	// Key prefix in Redis. Default "softphone:".
	Prefix string `json:"prefix,omitempty"`
	// Journal of the memory engine. Default data_dir/state.journal.
	Journal string `json:"journal,omitempty"`
	// What a token check does when the store cannot be read: "closed" (default: answer
	// 503) or "open" (accept a token whose signature and expiry are good, unchecked for
	// revocation). Login, refresh and logout always answer 503.
	OnError string `json:"on_error,omitempty"`
}

// storePool keeps one store per journal or Redis address across config reloads: a reload
// neither reconnects to Redis nor reopens (and forgets) the memory state.
var storePool = caddy.NewUsagePool()

type pooledStore struct {
	store.Store
	close func() error
}

func (p pooledStore) Destruct() error { return p.close() }

// redisStores holds the pooled Redis stores (pool key → *store.Redis) for the mirror gauge.
var redisStores sync.Map

// redisMirrorsLive is 1 when every pooled Redis store answers checks from its mirror.
func redisMirrorsLive() float64 {
	n, live := 0, 0
	redisStores.Range(func(_, v any) bool {
		n++
		if v.(*store.Redis).MirrorLive() {
			live++
		}
		return true
	})
	if n > 0 && live == n {
		return 1
	}
	return 0
}

func (c *StoreConfig) validate() error {
	switch c.Engine {
	case "", "memory":
	case "redis":
		if !strings.HasPrefix(c.URL, "redis://") && !strings.HasPrefix(c.URL, "rediss://") {
			return fmt.Errorf("softphone: store redis needs a redis:// or rediss:// url")
		}
	default:
		return fmt.Errorf("softphone: unknown store engine %q (want memory or redis)", c.Engine)
	}
	switch c.OnError {
	case "", "closed", "open":
	default:
		return fmt.Errorf("softphone: store on_error must be closed or open, not %q", c.OnError)
	}
	return nil
}

// failOpen reports whether token checks accept tokens when the store is down.
func (c *StoreConfig) failOpen() bool { return c.OnError == "open" }

// open takes (or makes) the pooled store and returns its pool key.
func (c *StoreConfig) open(dataDir string) (store.Store, string, error) {
	if err := c.validate(); err != nil {
		return nil, "", err
	}
	if c.Engine == "redis" {
		key := "redis\x00" + c.URL + "\x00" + c.Prefix
		v, _, err := storePool.LoadOrNew(key, func() (caddy.Destructor, error) {
			o, err := store.RedisOptions(c.URL)
			if err != nil {
				return nil, err
			}
			client := redis.NewClient(o)
			s := store.NewRedis(client, c.Prefix)
			redisStores.Store(key, s)
			// The mirror lives as long as the pooled client: a reload keeps it (and its
			// loaded state); the last config using it stops it, then closes the client.
			return pooledStore{Store: s, close: func() error {
				redisStores.Delete(key)
				s.Close()
				return client.Close()
			}}, nil
		})
		if err != nil {
			return nil, "", err
		}
		return v.(pooledStore).Store, key, nil
	}
	path := c.Journal
	if path == "" {
		path = filepath.Join(dataDir, "state.journal")
	}
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, "", err
	}
	key := "memory\x00" + abs
	v, _, err := storePool.LoadOrNew(key, func() (caddy.Destructor, error) {
		m, err := store.OpenMemory(abs, nil)
		if err != nil {
			return nil, err
		}
		return pooledStore{Store: m, close: m.Close}, nil
	})
	if err != nil {
		return nil, "", err
	}
	return v.(pooledStore).Store, key, nil
}
