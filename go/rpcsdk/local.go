package rpcsdk

import (
	"crypto/rand"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"
)

// The project's embedded single-machine registry (`zk` unset, `local` or
// `local:DIR`), written exactly as the Rust one does
// (crates/registry/src/local.rs): one file per endpoint,
// `{dir}/{product}/services/{service}/{service_id}.json`, holding the SPEC
// §6 record plus its product and its owner (`pid`, `pid_start`, `token`).
// An "ephemeral node" is a file whose owner is alive: the proxy's watcher
// skips and removes the files of dead processes, so a killed service
// disappears as with an expired session.

// localCheck is how often a registrant checks that its file is still
// there and still its own (the Rust registry's 10 × POLL).
const localCheck = time.Second

// localOwner tells who wrote a record: a process (pid, and its start time
// so that a recycled pid is not mistaken for it) and one registration of
// that process (token).
type localOwner struct {
	PID uint32 `json:"pid"`
	// Start of the process in clock ticks since boot (field 22 of
	// /proc/{pid}/stat); 0 where unknown.
	PIDStart uint64 `json:"pid_start"`
	Token    uint64 `json:"token"`
}

// localRecord is a file's content, with the field order of the Rust one.
type localRecord struct {
	Endpoint
	Product string `json:"product,omitempty"`
	localOwner
}

// encodeLocalRecord is the file content for ep, as the Rust registry
// writes it (pretty-printed, two-space indent).
func encodeLocalRecord(ep Endpoint, product string, owner localOwner) ([]byte, error) {
	return json.MarshalIndent(localRecord{Endpoint: ep, Product: product, localOwner: owner}, "", "  ")
}

// decodeLocalOwner is the owner a file names; false if the file is not a
// record with an owner (the Rust registrant then writes its own again).
func decodeLocalOwner(data []byte) (localOwner, bool) {
	var r struct {
		PID      *uint32 `json:"pid"`
		PIDStart uint64  `json:"pid_start"`
		Token    uint64  `json:"token"`
	}
	if err := json.Unmarshal(data, &r); err != nil || r.PID == nil {
		return localOwner{}, false
	}
	return localOwner{PID: *r.PID, PIDStart: r.PIDStart, Token: r.Token}, true
}

// parseProcStart reads the start time (field 22) from the text of
// /proc/{pid}/stat. The command name (field 2) may hold spaces and
// parentheses: fields are counted after its last ')'.
func parseProcStart(stat string) (uint64, bool) {
	i := strings.LastIndexByte(stat, ')')
	if i < 0 {
		return 0, false
	}
	fields := strings.Fields(stat[i+1:])
	if len(fields) < 20 {
		return 0, false
	}
	v, err := strconv.ParseUint(fields[19], 10, 64)
	return v, err == nil
}

// processStart is the start time of process pid, or 0 where unknown.
func processStart(pid int) uint64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	v, _ := parseProcStart(string(b))
	return v
}

func thisProcessOwner() localOwner {
	var b [8]byte
	if _, err := rand.Read(b[:]); err != nil {
		binary.LittleEndian.PutUint64(b[:], uint64(time.Now().UnixNano()))
	}
	pid := os.Getpid()
	return localOwner{PID: uint32(pid), PIDStart: processStart(pid), Token: binary.LittleEndian.Uint64(b[:])}
}

// openLocal creates `{dir}/{product}/services` if missing and returns it;
// it refuses a product directory or `services` directory that is a
// symbolic link (it would show another product's entries as this one's).
func openLocal(dir, product string) (string, error) {
	base := filepath.Join(dir, product, "services")
	if err := os.MkdirAll(base, 0o777); err != nil {
		return "", fmt.Errorf("local registry %s: %w", base, err)
	}
	for _, d := range []string{filepath.Dir(base), base} {
		if fi, err := os.Lstat(d); err == nil && fi.Mode()&fs.ModeSymlink != 0 {
			return "", fmt.Errorf("local registry %s is a symbolic link; a product's entries must be its own", d)
		}
	}
	return base, nil
}

// writeAtomically writes data to path through a temporary file of this
// process in the same directory, `.{name}.{pid}.tmp`, then a rename (which
// replaces a stale entry in one step).
func writeAtomically(dir, path string, data []byte) error {
	if err := os.MkdirAll(dir, 0o777); err != nil {
		return err
	}
	tmp := filepath.Join(dir, fmt.Sprintf(".%s.%d.tmp", filepath.Base(path), os.Getpid()))
	if err := os.WriteFile(tmp, data, 0o666); err != nil {
		os.Remove(tmp)
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return err
	}
	return nil
}

// localRegistration keeps one endpoint's file in the local registry.
type localRegistration struct {
	dir, path string
	data      []byte
	owner     localOwner

	stop     chan struct{}
	done     chan struct{}
	stopOnce sync.Once
}

// registerLocal writes ep's file under product in the local registry dir
// and keeps it: every second it puts the file back if it is gone (or
// unreadable as a record), and stops looking after it if another owner
// replaced it.
func registerLocal(dir, product string, ep Endpoint) (*localRegistration, error) {
	base, err := openLocal(dir, product)
	if err != nil {
		return nil, err
	}
	owner := thisProcessOwner()
	data, err := encodeLocalRecord(ep, product, owner)
	if err != nil {
		return nil, err
	}
	r := &localRegistration{
		dir:   filepath.Join(base, ep.Service),
		owner: owner,
		data:  data,
		stop:  make(chan struct{}),
		done:  make(chan struct{}),
	}
	r.path = filepath.Join(r.dir, ep.ServiceID+".json")
	if err := writeAtomically(r.dir, r.path, data); err != nil {
		return nil, fmt.Errorf("local registry %s: %w", r.path, err)
	}
	logf(levelInfo, "registered %s", r.path)
	go r.keep()
	return r, nil
}

// read is the owner of the file now: found false if it is gone or not a
// record with an owner; err on any other failure to read it.
func (r *localRegistration) read() (owner localOwner, found bool, err error) {
	b, err := os.ReadFile(r.path)
	if errors.Is(err, fs.ErrNotExist) {
		return localOwner{}, false, nil
	}
	if err != nil {
		return localOwner{}, false, err
	}
	owner, found = decodeLocalOwner(b)
	return owner, found, nil
}

func (r *localRegistration) keep() {
	defer close(r.done)
	for {
		select {
		case <-r.stop:
			return
		case <-time.After(localCheck):
		}
		owner, found, err := r.read()
		switch {
		case err != nil:
			logf(levelDebug, "check %s: %v", r.path, err)
		case !found:
			if err := writeAtomically(r.dir, r.path, r.data); err != nil {
				logf(levelWarn, "re-register %s failed: %v", r.path, err)
			} else {
				logf(levelInfo, "re-registered %s", r.path)
			}
		case owner != r.owner:
			logf(levelWarn, "%s was taken over by pid %d: no longer keeping it", r.path, owner.PID)
			return
		}
	}
}

// deregister stops keeping the file and removes it if it is still this
// registration's (a successor may have replaced it).
func (r *localRegistration) deregister() {
	first := false
	r.stopOnce.Do(func() { close(r.stop); first = true })
	<-r.done
	if !first {
		return
	}
	owner, found, err := r.read()
	if err != nil || !found || owner != r.owner {
		return
	}
	if err := os.Remove(r.path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		logf(levelWarn, "deregister %s failed: %v", r.path, err)
		return
	}
	logf(levelInfo, "deregistered %s", r.path)
}

func (r *localRegistration) close() { r.deregister() }

// registrant is a registration in ZooKeeper or in the local registry.
type registrant interface {
	deregister()
	close()
}
