// Package broker is an in-process pub/sub engine with Nchan's client-visible behaviour:
// message ids "<unix time>:<tag>", a per-channel buffer (one message by default, so a new
// subscriber gets the current snapshot at once), long-poll cursoring with Last-Modified /
// Etag, EventSource with id: lines and Last-Event-ID resume, and WebSocket. It serves the
// gateway's subscribers either on its own (the embedded default) or fed by one upstream
// subscription per channel to a real Nchan (Follow), so thousands of subscribers cost the
// gateway no upstream connections of their own.
package broker

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// ID is a message id as Nchan makes it: the publish time in seconds and a tag counting
// messages published within that second.
type ID struct {
	Time int64
	Tag  int
}

func (id ID) String() string { return strconv.FormatInt(id.Time, 10) + ":" + strconv.Itoa(id.Tag) }

// Less orders ids.
func (id ID) Less(o ID) bool { return id.Time < o.Time || (id.Time == o.Time && id.Tag < o.Tag) }

// ParseID reads "<time>:<tag>" (Nchan also writes a multi-channel tag as "[n]": accepted).
func ParseID(s string) (ID, error) {
	t, tag, ok := strings.Cut(strings.TrimSpace(s), ":")
	if !ok || len(s) > 64 {
		return ID{}, errors.New("broker: bad message id")
	}
	tag = strings.Trim(tag, "[]")
	ti, err1 := strconv.ParseInt(t, 10, 64)
	ta, err2 := strconv.Atoi(tag)
	if err1 != nil || err2 != nil || ti < 0 || ta < 0 {
		return ID{}, errors.New("broker: bad message id")
	}
	return ID{ti, ta}, nil
}

// Message is one published message.
type Message struct {
	ID          ID
	ContentType string
	Data        []byte
	expires     time.Time
}

// Options tune a Broker; zero values take Nchan's settings in docker/nginx-nchan.conf.
type Options struct {
	BufferLength      int           // messages kept per channel (1)
	MessageTimeout    time.Duration // how long a message is kept (1h)
	SubscriberTimeout time.Duration // a long-poll waits this long, then 408 (60s; negative: forever)
	MaxMessageSize    int64         // larger publishes get 413 (256 KiB)
	MaxChannels       int           // more channels are refused (1024)
	KeepLongPolls     bool          // wait in the request's goroutine instead of parking (see park.go)
	SweepInterval     time.Duration // how often parked long-polls are checked for gone clients (5s)
	Now               func() time.Time
}

// Errors from Publish.
var (
	ErrTooLarge    = errors.New("broker: message too large")
	ErrTooMany     = errors.New("broker: too many channels")
	ErrUnavailable = errors.New("broker: upstream unavailable")
)

// Broker holds channels. Safe for concurrent use.
type Broker struct {
	opts      Options
	mu        sync.Mutex
	channels  map[string]*channel
	subs      atomic.Int64
	done      chan struct{}
	closeOnce sync.Once
}

type channel struct {
	msgs          []Message
	last          ID
	changed       chan struct{} // closed and replaced at every publish, delete or upstream change
	gone          bool          // deleted: subscribers get 410
	down          bool          // upstream Nchan unreachable: subscribers get 502
	subscribers   int
	lastRequested time.Time
	parked        map[*parked]struct{} // long-polls waiting without a goroutine
	streams       map[*stream]struct{} // EventSource streams without a goroutine
}

// New returns an empty broker.
func New(o Options) *Broker {
	if o.BufferLength <= 0 {
		o.BufferLength = 1
	}
	if o.MessageTimeout <= 0 {
		o.MessageTimeout = time.Hour
	}
	if o.SubscriberTimeout == 0 {
		o.SubscriberTimeout = 60 * time.Second
	}
	if o.MaxMessageSize <= 0 {
		o.MaxMessageSize = 256 << 10
	}
	if o.MaxChannels <= 0 {
		o.MaxChannels = 1024
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.SweepInterval <= 0 {
		o.SweepInterval = 5 * time.Second
	}
	b := &Broker{opts: o, channels: map[string]*channel{}, done: make(chan struct{})}
	go b.sweepParked(o.SweepInterval, b.done)
	return b
}

// Close stops the broker's background work.
func (b *Broker) Close() {
	b.closeOnce.Do(func() { close(b.done) })
}

// Subscribers is the number of subscribers connected now, over all channels.
func (b *Broker) Subscribers() int { return int(b.subs.Load()) }

// channelLocked returns the named channel, creating it when create is set.
func (b *Broker) channelLocked(name string, create bool) (*channel, error) {
	c := b.channels[name]
	if c == nil && create {
		if len(b.channels) >= b.opts.MaxChannels {
			return nil, ErrTooMany
		}
		c = &channel{changed: make(chan struct{})}
		b.channels[name] = c
	}
	return c, nil
}

// Publish stores a message and wakes the channel's subscribers. It returns the message and
// how many subscribers were connected (Nchan answers 201 when some were, 202 otherwise).
func (b *Broker) Publish(name, contentType string, data []byte) (Message, int, error) {
	return b.publish(name, contentType, data, nil)
}

// publishID stores a message under a given id (from upstream Nchan); ids never go backwards.
func (b *Broker) publishID(name, contentType string, data []byte, id ID) (Message, int, error) {
	return b.publish(name, contentType, data, &id)
}

func (b *Broker) publish(name, contentType string, data []byte, id *ID) (Message, int, error) {
	if int64(len(data)) > b.opts.MaxMessageSize {
		return Message{}, 0, ErrTooLarge
	}
	now := b.opts.Now()
	b.mu.Lock()
	defer b.mu.Unlock()
	c, err := b.channelLocked(name, true)
	if err != nil {
		return Message{}, 0, err
	}
	var next ID
	switch {
	case id != nil && c.last.Less(*id):
		next = *id
	case now.Unix() > c.last.Time:
		next = ID{Time: now.Unix()}
	default: // same second, or a clock that went back
		next = ID{Time: c.last.Time, Tag: c.last.Tag + 1}
	}
	m := Message{ID: next, ContentType: contentType, Data: append([]byte(nil), data...), expires: now.Add(b.opts.MessageTimeout)}
	c.msgs = append(c.msgs, m)
	if len(c.msgs) > b.opts.BufferLength {
		c.msgs = append(c.msgs[:0:0], c.msgs[len(c.msgs)-b.opts.BufferLength:]...)
	}
	c.last = next
	c.wake()
	ps, ss := c.takeParked(), c.streamList()
	subscribers := c.subscribers
	go b.wakeParked(ps)
	go wakeStreams(ss)
	return m, subscribers, nil
}

func (c *channel) wake() {
	close(c.changed)
	c.changed = make(chan struct{})
}

// Last returns the channel's newest live message.
func (b *Broker) Last(name string) (Message, bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	c := b.channels[name]
	if c == nil {
		return Message{}, false
	}
	now := b.opts.Now()
	for i := len(c.msgs) - 1; i >= 0; i-- {
		if now.Before(c.msgs[i].expires) {
			return c.msgs[i], true
		}
	}
	return Message{}, false
}

// Delete removes a channel: its subscribers get 410. It reports whether it existed.
func (b *Broker) Delete(name string) (Info, bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	c := b.channels[name]
	if c == nil {
		return Info{}, false
	}
	info := b.infoLocked(c)
	// Nchan kicks the subscribers (410) and keeps an empty channel that remembers its last id.
	b.channels[name] = &channel{changed: make(chan struct{}), last: c.last, lastRequested: c.lastRequested, down: c.down}
	c.gone = true
	c.msgs = nil
	c.wake()
	ps, ss := c.takeParked(), c.streamList()
	go b.wakeParked(ps)
	go wakeStreams(ss)
	return info, true
}

// setDown marks the channel's upstream as (un)reachable and wakes its subscribers.
func (b *Broker) setDown(name string, down bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	c, err := b.channelLocked(name, true)
	if err != nil || c.down == down {
		return
	}
	c.down = down
	c.wake()
	ps, ss := c.takeParked(), c.streamList()
	go b.wakeParked(ps)
	go wakeStreams(ss)
}

// Info is a channel's publisher-side description.
type Info struct {
	Messages      int
	Requested     int // seconds since a subscriber last asked; -1 never
	Subscribers   int
	LastMessageID ID
}

// Info describes a channel; ok is false when it does not exist.
func (b *Broker) Info(name string) (Info, bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	c := b.channels[name]
	if c == nil {
		return Info{}, false
	}
	return b.infoLocked(c), true
}

func (b *Broker) infoLocked(c *channel) Info {
	now := b.opts.Now()
	n := 0
	for _, m := range c.msgs {
		if now.Before(m.expires) {
			n++
		}
	}
	req := -1
	if !c.lastRequested.IsZero() {
		req = int(now.Sub(c.lastRequested) / time.Second)
	}
	return Info{Messages: n, Requested: req, Subscribers: c.subscribers, LastMessageID: c.last}
}

// cursor is where a subscriber stands: nil means "from the oldest buffered message".
type cursor = *ID

// join counts a subscriber on the channel (creating it) and returns it.
func (b *Broker) join(name string) (*channel, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	c, err := b.channelLocked(name, true)
	if err != nil {
		return nil, err
	}
	c.subscribers++
	b.subs.Add(1)
	return c, nil
}

// leave undoes a join.
func (b *Broker) leave(c *channel) {
	b.mu.Lock()
	defer b.mu.Unlock()
	c.subscribers--
	b.subs.Add(-1)
}

// poll returns the first live message after cur, or the oldest when cur is nil or older
// than everything buffered (Nchan hands over the oldest it still has), the channel's state
// and the signal that something changed.
func (b *Broker) poll(c *channel, cur cursor) (m Message, ok bool, st state, wait <-chan struct{}) {
	b.mu.Lock()
	defer b.mu.Unlock()
	m, ok, st = b.pollLocked(c, cur)
	return m, ok, st, c.changed
}

func (b *Broker) pollLocked(c *channel, cur cursor) (Message, bool, state) {
	now := b.opts.Now()
	c.lastRequested = now
	switch {
	case c.gone:
		return Message{}, false, stateGone
	case c.down:
		return Message{}, false, stateDown
	}
	for _, msg := range c.msgs {
		if now.Before(msg.expires) && (cur == nil || cur.Less(msg.ID)) {
			return msg, true, stateOpen
		}
	}
	return Message{}, false, stateOpen
}

type state int

const (
	stateOpen state = iota
	stateGone
	stateDown
)

func (i Info) text() string {
	return fmt.Sprintf("queued messages: %d\r\nlast requested: %d sec. ago\r\nactive subscribers: %d\r\nlast message id: %s",
		i.Messages, i.Requested, i.Subscribers, i.LastMessageID)
}

func (i Info) json() string {
	return fmt.Sprintf(`{"messages": %d, "requested": %d, "subscribers": %d, "last_message_id": "%s" }`,
		i.Messages, i.Requested, i.Subscribers, i.LastMessageID)
}
