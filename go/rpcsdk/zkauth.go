package rpcsdk

import (
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"unicode"
	"unicode/utf8"
)

// ZKAuth is a ZooKeeper identity (`zk_auth`, `zk_auth_file`): the one a
// service's ZooKeeper session authenticates as, and that owns the nodes it
// creates. Only ZooKeeper's `digest` scheme is accepted:
// `digest:user:password`, the rules of the Rust reader
// (crates/config/src/zk_auth.rs).
//
// The password never leaves it except as the bytes sent to ZooKeeper
// (Credentials): String, GoString and configuration errors show
// `digest:user` only.
type ZKAuth struct {
	credentials string // user:password, as the digest scheme wants it
	userLen     int
}

// ZKAuthScheme is the only scheme accepted.
const ZKAuthScheme = "digest"

// ParseZKAuth parses `digest:user:password` (surrounding white space
// ignored). The user is non-empty, without white space, control characters
// or ':'; the password is non-empty, without control characters, and may
// hold ':' (ZooKeeper splits at the first one). Errors say what is wrong
// without repeating the password.
func ParseZKAuth(text string) (*ZKAuth, error) {
	text = strings.TrimSpace(text)
	scheme, rest, ok := strings.Cut(text, ":")
	if !ok {
		return nil, errors.New("expected digest:user:password")
	}
	if scheme != ZKAuthScheme {
		return nil, fmt.Errorf("scheme %q is not supported; expected digest:user:password", scheme)
	}
	user, password, ok := strings.Cut(rest, ":")
	if !ok {
		return nil, errors.New("expected digest:user:password (no password)")
	}
	if user == "" || strings.IndexFunc(user, func(r rune) bool { return unicode.IsSpace(r) || unicode.IsControl(r) }) >= 0 {
		return nil, errors.New("the user must be non-empty, without spaces")
	}
	if password == "" {
		return nil, errors.New("the password is empty")
	}
	if strings.IndexFunc(password, unicode.IsControl) >= 0 {
		return nil, errors.New("the password holds control characters (a second line?)")
	}
	return &ZKAuth{credentials: rest, userLen: len(user)}, nil
}

// ReadZKAuthFile reads `digest:user:password` from path (surrounding white
// space, such as the final newline, ignored). It refuses anything but a
// regular file, and a file its group or others have any permission on
// (`chmod 600` it).
func ReadZKAuthFile(path string) (*ZKAuth, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("cannot read it: %v", pathErr(err))
	}
	if !fi.Mode().IsRegular() {
		return nil, errors.New("not a regular file")
	}
	if mode := fi.Mode().Perm(); mode&0o077 != 0 {
		return nil, fmt.Errorf("its mode is %04o: it must be readable by its owner only (chmod 600)", uint32(mode))
	}
	text, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("cannot read it: %v", pathErr(err))
	}
	if !utf8.Valid(text) {
		return nil, errors.New("cannot read it: stream did not contain valid UTF-8")
	}
	return ParseZKAuth(string(text))
}

// pathErr is an os error without the path, which the caller names.
func pathErr(err error) error {
	var pe *os.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return err
}

// User is the user part of the identity.
func (a ZKAuth) User() string { return a.credentials[:a.userLen] }

// Credentials is what ZooKeeper's digest scheme takes: `user:password`.
// For the ZooKeeper client only; never log it.
func (a ZKAuth) Credentials() []byte { return []byte(a.credentials) }

// String is `digest:user`, never the password.
func (a ZKAuth) String() string { return ZKAuthScheme + ":" + a.User() }

// GoString hides the password from %#v too.
func (a ZKAuth) GoString() string { return "ZKAuth(" + a.String() + ":<hidden>)" }

// Format prints String (GoString for %#v) whatever the verb, so that no
// verb prints the fields.
func (a ZKAuth) Format(f fmt.State, verb rune) {
	if verb == 'v' && f.Flag('#') {
		io.WriteString(f, a.GoString())
		return
	}
	io.WriteString(f, a.String())
}

// hidePassword is a `zk_auth` value fit for an error message:
// `scheme:user:…`, or `…`.
func hidePassword(value string) string {
	parts := strings.SplitN(value, ":", 3)
	if len(parts) == 3 {
		return parts[0] + ":" + parts[1] + ":…"
	}
	return "…"
}
