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
//
// With credentials (`zk_auth`), the session authenticates once (AddAuth)
// before anything is published; the library keeps them and sends them
// again on every new connection, within the session or under a new one
// after an expiry, before any queued request (see resendZkAuth in
// github.com/samuel/go-zookeeper/zk). The nodes it creates get the ACLs
// of the Rust registry (crates/registry/src/zk.rs):
//
//   - shared parents, /zk, /zk/product, /zk/product/{product} and its
//     services: world:anyone READ + CREATE;
//   - the service's node, …/services/{service}: its creator's identity
//     ALL, world:anyone READ;
//   - the endpoint: its creator's identity ALL, world:anyone READ.
//
// ZooKeeper checks a delete against the parent's ACL and a write against
// the node's own: anyone reads everything and may add a service, nobody
// else can remove or rewrite this service's endpoints or its node. Nodes
// that exist already keep their ACL; a service node that lets anyone
// delete its children is warned about. Without credentials every node is
// open to all, as before.
type registration struct {
	conn   *zk.Conn
	path   string
	data   []byte
	access access

	kick chan struct{} // a session was (re)established
	stop chan struct{}
	done chan struct{}

	mu        sync.Mutex
	published int64 // the session the node was last created under
	ready     chan struct{}
	readyOnce sync.Once
	refused   chan error // the first attempt was not allowed (ErrNoAuth)
}

// access is the ACLs of the nodes a registration creates, by its
// credentials.
type access struct {
	shared []zk.ACL // the parents every service of every product shares
	owned  []zk.ACL // the service's node and the endpoint
	authed bool
}

func accessFor(auth *ZKAuth) access {
	if auth == nil {
		open := zk.WorldACL(zk.PermAll)
		return access{shared: open, owned: open}
	}
	return access{
		shared: zk.WorldACL(zk.PermRead | zk.PermCreate),
		// `auth`: every identity the creating session authenticated as.
		owned:  append(zk.AuthACL(zk.PermAll), zk.WorldACL(zk.PermRead)...),
		authed: true,
	}
}

// register connects to ZooKeeper, authenticated as auth if not nil, and
// publishes ep under product. It returns once the node exists, or fails if
// that takes longer than twice the session timeout (at least 10 s), or at
// once if ZooKeeper refuses it for lack of permission (the service's node
// belongs to another identity).
func register(hosts string, sessionTimeout time.Duration, product string, ep Endpoint, auth *ZKAuth) (*registration, error) {
	data, err := json.Marshal(ep)
	if err != nil {
		return nil, err
	}
	r := &registration{
		path:    servicePath(product, ep),
		data:    data,
		access:  accessFor(auth),
		kick:    make(chan struct{}, 1),
		stop:    make(chan struct{}),
		done:    make(chan struct{}),
		ready:   make(chan struct{}),
		refused: make(chan error, 1),
	}
	conn, _, err := zk.Connect(strings.Split(hosts, ","), sessionTimeout,
		zk.WithLogger(zkLogger{}),
		zk.WithEventCallback(r.onEvent))
	if err != nil {
		return nil, fmt.Errorf("connect to ZooKeeper %s: %w", hosts, err)
	}
	wait := sessionTimeout
	if wait < 5*time.Second {
		wait = 5 * time.Second
	}
	wait *= 2
	deadline := time.Now().Add(wait)
	if auth != nil {
		// Before anything is published: the library sends it again on
		// every later connection, before any request.
		if err := addAuth(conn, auth, deadline); err != nil {
			conn.Close()
			return nil, fmt.Errorf("authenticate to ZooKeeper %s as %v: %w", hosts, auth, err)
		}
		logf(levelInfo, "ZooKeeper %s: authenticated as %v", hosts, auth)
	}
	r.conn = conn
	go r.keep()
	// A session may have been established before conn was set.
	r.poke()

	select {
	case <-r.ready:
		return r, nil
	case err := <-r.refused:
		<-r.done
		conn.Close()
		return nil, err
	case <-time.After(time.Until(deadline)):
		close(r.stop)
		<-r.done
		conn.Close()
		return nil, fmt.Errorf("could not create %s in ZooKeeper %s within %v", r.path, hosts, wait)
	}
}

// addAuth adds auth to conn's session, retrying (a connection lost with
// the request in flight) until deadline.
func addAuth(conn *zk.Conn, auth *ZKAuth, deadline time.Time) error {
	for {
		done := make(chan error, 1)
		go func() { done <- conn.AddAuth(ZKAuthScheme, auth.Credentials()) }()
		var err error
		select {
		case err = <-done:
		case <-time.After(time.Until(deadline)):
			return errors.New("timed out")
		}
		if err == nil || errors.Is(err, zk.ErrAuthFailed) || errors.Is(err, zk.ErrClosing) {
			return err
		}
		logf(levelDebug, "ZooKeeper authentication failed: %v; retrying", err)
		select {
		case <-time.After(retryPause):
		case <-time.After(time.Until(deadline)):
			return fmt.Errorf("timed out (last error: %w)", err)
		}
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
				err := publish(r.conn, r.access, r.path, r.data)
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
				if errors.Is(err, zk.ErrNoAuth) {
					select {
					case <-r.ready:
						logf(levelWarn, "register %s refused (%v); retrying", r.path, err)
					default:
						// The first attempt: fail the registration at once.
						r.refused <- fmt.Errorf("not allowed to register %s: its service's node %s belongs to "+
							"another ZooKeeper identity (zk_auth), or was created by one while this registrant "+
							"has none: %w", r.path, parent(r.path), err)
						return
					}
				} else {
					logf(levelDebug, "register %s failed: %v; retrying", r.path, err)
				}
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
// persistent parents: the shared ones and the service's node (see
// registration for their ACLs). A node of another session at the same path
// (a leftover of an older session of ours) is deleted first (SPEC §6).
func publish(conn *zk.Conn, acc access, path string, data []byte) error {
	service := parent(path)
	if err := ensureOwnedDir(conn, acc, parent(service), service); err != nil {
		return err
	}
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
				return fmt.Errorf("delete the leftover %s: %w", path, err)
			}
			logf(levelInfo, "deleted a leftover node at %s", path)
		}
		_, err = conn.Create(path, data, zk.FlagEphemeral, acc.owned)
		if err == nil {
			return nil
		}
		if !errors.Is(err, zk.ErrNodeExists) {
			return fmt.Errorf("create %s: %w", path, err)
		}
	}
	return zk.ErrNodeExists
}

// ensureOwnedDir creates path's ancestors up to and including shared (with
// the shared ACL), then the persistent node path itself (owned), if
// missing; path is shared's child. With credentials, it warns when an
// existing path lets anyone delete its children: what is registered under
// it is then not protected.
func ensureOwnedDir(conn *zk.Conn, acc access, shared, path string) error {
	if err := mkdirs(conn, shared, acc.shared); err != nil {
		return err
	}
	_, err := conn.Create(path, nil, 0, acc.owned)
	switch {
	case err == nil:
		return nil
	case !errors.Is(err, zk.ErrNodeExists):
		return fmt.Errorf("create %s: %w", path, err)
	case !acc.authed:
		return nil
	}
	acls, _, err := conn.GetACL(path)
	if err != nil {
		return fmt.Errorf("read the ACL of %s: %w", path, err)
	}
	for _, a := range acls {
		if a.Scheme == "world" && a.ID == "anyone" && a.Perms&zk.PermDelete != 0 {
			logf(levelWarn, "%s lets anyone delete its children (it was created without credentials): "+
				"what is registered under it is not protected; restrict it with setAcl", path)
			break
		}
	}
	return nil
}

// parent is the parent of an absolute path.
func parent(path string) string { return path[:strings.LastIndexByte(path, '/')] }

func mkdirs(conn *zk.Conn, dir string, acl []zk.ACL) error {
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
