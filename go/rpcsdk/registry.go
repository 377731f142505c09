package rpcsdk

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/samuel/go-zookeeper/zk"
)

// retryPause is the pause between retries of a failed ZooKeeper operation.
const retryPause = 200 * time.Millisecond

// registration keeps one endpoint's ephemeral node published in ZooKeeper
// (SPEC §6) across connection losses and session expiry, as the Rust SDK
// does: the ZooKeeper library reconnects within a session by itself and,
// once a session has expired, opens a new one; every time a session is
// (re)established the node is published again under it.
type registration struct {
	conn *zk.Conn
	path string
	data []byte

	kick chan struct{} // a session was (re)established
	stop chan struct{}
	done chan struct{}

	mu        sync.Mutex
	published int64 // the session the node was last created under
	ready     chan struct{}
	readyOnce sync.Once
}

// register connects to ZooKeeper and publishes ep under product. It
// returns once the node exists, or fails if that takes longer than twice
// the session timeout (at least 10 s).
func register(hosts string, sessionTimeout time.Duration, product string, ep Endpoint) (*registration, error) {
	data, err := json.Marshal(ep)
	if err != nil {
		return nil, err
	}
	r := &registration{
		path:  servicePath(product, ep),
		data:  data,
		kick:  make(chan struct{}, 1),
		stop:  make(chan struct{}),
		done:  make(chan struct{}),
		ready: make(chan struct{}),
	}
	conn, _, err := zk.Connect(strings.Split(hosts, ","), sessionTimeout,
		zk.WithLogger(zkLogger{}),
		zk.WithEventCallback(r.onEvent))
	if err != nil {
		return nil, fmt.Errorf("connect to ZooKeeper %s: %w", hosts, err)
	}
	r.conn = conn
	go r.keep()
	// A session may have been established before conn was set.
	r.poke()

	wait := sessionTimeout
	if wait < 5*time.Second {
		wait = 5 * time.Second
	}
	wait *= 2
	select {
	case <-r.ready:
		return r, nil
	case <-time.After(wait):
		close(r.stop)
		<-r.done
		conn.Close()
		return nil, fmt.Errorf("could not create %s in ZooKeeper %s within %v", r.path, hosts, wait)
	}
}

// onEvent runs on the library's goroutine: it must not block.
func (r *registration) onEvent(ev zk.Event) {
	if ev.Type != zk.EventSession {
		return
	}
	switch ev.State {
	case zk.StateHasSession:
		r.poke()
	case zk.StateExpired:
		logf(levelWarn, "ZooKeeper session expired; %s will be registered again under a new session", r.path)
	case zk.StateDisconnected:
		logf(levelInfo, "ZooKeeper connection lost")
	}
}

func (r *registration) poke() {
	select {
	case r.kick <- struct{}{}:
	default:
	}
}

// keep publishes the node whenever a session is (re)established, retrying
// until it exists under the current session.
func (r *registration) keep() {
	defer close(r.done)
	for {
		select {
		case <-r.stop:
			return
		case <-r.kick:
		}
		for {
			session := r.conn.SessionID()
			if session != 0 && r.conn.State() == zk.StateHasSession {
				err := publish(r.conn, r.path, r.data)
				if err == nil {
					r.mu.Lock()
					changed := r.published != session
					r.published = session
					r.mu.Unlock()
					if changed {
						logf(levelInfo, "registered %s (session 0x%x)", r.path, session)
					}
					r.readyOnce.Do(func() { close(r.ready) })
					break
				}
				logf(levelDebug, "register %s failed: %v; retrying", r.path, err)
			}
			select {
			case <-r.stop:
				return
			case <-r.kick:
			case <-time.After(retryPause):
			}
		}
	}
}

// publish creates path as an ephemeral node of this session, with
// persistent empty parents. A node of another session at the same path (a
// leftover of an older session of ours) is deleted first (SPEC §6).
func publish(conn *zk.Conn, path string, data []byte) error {
	if err := mkdirs(conn, path[:strings.LastIndexByte(path, '/')]); err != nil {
		return err
	}
	acl := zk.WorldACL(zk.PermAll)
	for i := 0; i < 3; i++ {
		ok, stat, err := conn.Exists(path)
		if err != nil {
			return err
		}
		if ok {
			if stat.EphemeralOwner == conn.SessionID() {
				return nil // already ours: a retry after a lost reply
			}
			err := conn.Delete(path, stat.Version)
			if err != nil && !errors.Is(err, zk.ErrNoNode) && !errors.Is(err, zk.ErrBadVersion) {
				return err
			}
			logf(levelInfo, "deleted a leftover node at %s", path)
		}
		_, err = conn.Create(path, data, zk.FlagEphemeral, acl)
		if err == nil {
			return nil
		}
		if !errors.Is(err, zk.ErrNodeExists) {
			return err
		}
	}
	return zk.ErrNodeExists
}

func mkdirs(conn *zk.Conn, dir string) error {
	acl := zk.WorldACL(zk.PermAll)
	at := 0
	for at < len(dir) {
		next := strings.IndexByte(dir[at+1:], '/')
		if next < 0 {
			at = len(dir)
		} else {
			at += 1 + next
		}
		_, err := conn.Create(dir[:at], nil, 0, acl)
		if err != nil && !errors.Is(err, zk.ErrNodeExists) {
			return fmt.Errorf("create %s: %w", dir[:at], err)
		}
	}
	return nil
}

// deregister stops republishing and deletes the node if it is still this
// session's (a successor may have replaced it). The session stays open
// until close.
func (r *registration) deregister() {
	select {
	case <-r.stop:
		return
	default:
	}
	close(r.stop)
	<-r.done
	done := make(chan struct{})
	go func() {
		defer close(done)
		ok, stat, err := r.conn.Exists(r.path)
		switch {
		case err != nil:
			logf(levelWarn, "deregister %s failed: %v", r.path, err)
		case ok && stat.EphemeralOwner == r.conn.SessionID():
			if err := r.conn.Delete(r.path, stat.Version); err != nil {
				logf(levelWarn, "deregister %s failed: %v", r.path, err)
			} else {
				logf(levelInfo, "deregistered %s", r.path)
			}
		}
	}()
	select {
	case <-done:
	case <-time.After(2 * time.Second):
		logf(levelWarn, "deregister %s timed out", r.path)
	}
}

// close ends the session (removing the node if it is still there).
func (r *registration) close() {
	r.deregister()
	r.conn.Close()
}
