package location

import (
	"context"
	"errors"

	"github.com/redis/go-redis/v9"

	"github.com/softphone-gateway/softphone-gateway/sipsidecar/internal/coalesce"
)

// pipe sends the commands that concurrent REGISTERs issue at about the same moment as one
// pipeline: one write and one read on one connection for all of them, instead of a write,
// a read and a connection-pool round for each. Under load that is most of what a Redis
// command costs the sidecar (and Redis). Each command still gets its own answer or error,
// and Redis runs them one after another, as it would on separate connections.
type pipe struct {
	c redis.UniversalClient
	q *coalesce.Queue[*pipedCmd]
	// handOut, when set, wraps the answering of each pipeline's commands (see
	// Redis.SetHandOut).
	handOut func(deliver func())
}

// pipedCmd is a command and who waits for it: a goroutine on done, or then, called on the
// goroutine that read the answer.
type pipedCmd struct {
	cmd  redis.Cmder
	done chan struct{}
	then func()
}

const (
	pipeSenders = 4    // pipelines in flight at once
	pipeMax     = 128  // commands in one pipeline
	pipeQueued  = 8192 // commands waiting at most; beyond, a command fails at once
)

var errPipeFull = errors.New("too many Redis commands waiting")

func newPipe(c redis.UniversalClient) *pipe {
	p := &pipe{c: c}
	p.q = &coalesce.Queue[*pipedCmd]{Send: p.send, Limit: func() int { return pipeMax },
		Senders: pipeSenders, MaxQueued: pipeQueued}
	return p
}

// do runs cmd in the next pipeline and returns its error (its result is in cmd).
func (p *pipe) do(ctx context.Context, cmd redis.Cmder) error {
	pc := &pipedCmd{cmd: cmd, done: make(chan struct{})}
	if !p.q.Add(pc) {
		return errPipeFull
	}
	select {
	case <-pc.done:
		return cmd.Err()
	case <-ctx.Done():
		return ctx.Err() // the answer, when it comes, is dropped with cmd
	}
}

func (p *pipe) send(group []*pipedCmd) {
	ctx := context.Background() // the client's read and write timeouts bound the exchange
	pl := p.c.Pipeline()
	for _, pc := range group {
		pl.Process(ctx, pc.cmd)
	}
	pl.Exec(ctx) // every command holds its own answer or error
	answer := func() {
		for _, pc := range group {
			if pc.then != nil {
				pc.then()
			} else {
				close(pc.done)
			}
		}
	}
	if p.handOut != nil {
		p.handOut(answer)
	} else {
		answer()
	}
}

// doThen runs cmd in the next pipeline and calls then when its answer (or error) is in cmd,
// on the goroutine that read it: then must not wait. false: too many commands are waiting,
// and then is not called.
func (p *pipe) doThen(cmd redis.Cmder, then func()) bool {
	return p.q.Add(&pipedCmd{cmd: cmd, then: then})
}

// script runs s through the pipeline as EVALSHA; a Redis that does not know the script yet
// (a restart, SCRIPT FLUSH) gets it once with EVAL and SCRIPT LOAD, outside the pipeline.
func (p *pipe) script(ctx context.Context, s *redis.Script, keys []string, args ...any) *redis.Cmd {
	cmd := evalsha(ctx, s, keys, args)
	if err := p.do(ctx, cmd); err != nil && redis.HasErrorPrefix(err, "NOSCRIPT") {
		return s.Run(ctx, p.c, keys, args...)
	}
	return cmd
}

// evalsha is the command that runs s by its hash.
func evalsha(ctx context.Context, s *redis.Script, keys []string, args []any) *redis.Cmd {
	a := make([]any, 0, 3+len(keys)+len(args))
	a = append(a, "evalsha", s.Hash(), len(keys))
	for _, k := range keys {
		a = append(a, k)
	}
	a = append(a, args...)
	return redis.NewCmd(ctx, a...)
}

// hgetall reads a hash through the pipeline.
func (p *pipe) hgetall(ctx context.Context, key string) (map[string]string, error) {
	cmd := redis.NewMapStringStringCmd(ctx, "hgetall", key)
	if err := p.do(ctx, cmd); err != nil {
		return nil, err
	}
	return cmd.Val(), nil
}
