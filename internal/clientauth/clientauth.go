// Package clientauth checks the logins that clients present to regcache
// itself: users from an htpasswd file of bcrypt hashes, the format
// Distribution, zot and nginx read (`htpasswd -B`), and the short-lived
// bearer tokens regcache issues to them (Issuer).
//
// bcrypt is slow on purpose (tens of milliseconds a check). Most clients
// check a login once per token, but some send Basic credentials with every
// request, so a successful check is remembered for a few minutes under a
// keyed hash of the credentials. Failures are never remembered.
package clientauth

import (
	"bufio"
	"bytes"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"fmt"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/crypto/bcrypt"
)

// Bounds of the memory of good credentials. Five minutes keeps bcrypt off
// the path of every request of a pull; a user removed from the file (which
// needs a restart anyway) is not what the bound is about.
const (
	verifiedTTL = 5 * time.Minute
	verifiedMax = 4096
)

// Htpasswd is a set of users with bcrypt password hashes.
type Htpasswd struct {
	users map[string][]byte
	// dummy is compared against when the user is unknown, so the answer
	// takes as long as for a known user with a wrong password.
	dummy []byte
	key   [32]byte // HMAC key for the verified set; random per process
	now   func() time.Time

	mu       sync.Mutex
	verified map[[32]byte]time.Time // HMAC(user, password) → until
}

// Load reads an htpasswd file. Errors name the file and line; they never
// include a hash.
func Load(path string) (*Htpasswd, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	return Parse(data, path)
}

// Parse reads htpasswd lines "user:hash" from data; source names it in
// errors. Blank lines and lines starting with # are skipped.
func Parse(data []byte, source string) (*Htpasswd, error) {
	h := &Htpasswd{users: map[string][]byte{}, verified: map[[32]byte]time.Time{}, now: time.Now}
	sc := bufio.NewScanner(bytes.NewReader(data))
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		user, hash, ok := strings.Cut(line, ":")
		if !ok || user == "" || hash == "" {
			return nil, fmt.Errorf("%s:%d: want user:bcrypt-hash", source, n)
		}
		if _, dup := h.users[user]; dup {
			return nil, fmt.Errorf("%s:%d: user %q is listed twice", source, n, user)
		}
		if _, err := bcrypt.Cost([]byte(hash)); err != nil {
			return nil, fmt.Errorf("%s:%d: user %q: only bcrypt hashes are supported (create them with htpasswd -B)", source, n, user)
		}
		h.users[user] = []byte(hash)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("%s: %w", source, err)
	}
	if len(h.users) == 0 {
		return nil, fmt.Errorf("%s: no users", source)
	}
	if _, err := rand.Read(h.key[:]); err != nil {
		return nil, err
	}
	// Same cost as a real entry, so unknown users take as long.
	for _, hash := range h.users {
		cost, _ := bcrypt.Cost(hash)
		dummy, err := bcrypt.GenerateFromPassword(h.key[:16], cost)
		if err != nil {
			return nil, err
		}
		h.dummy = dummy
		break
	}
	return h, nil
}

// Users is the number of users in the file.
func (h *Htpasswd) Users() int { return len(h.users) }

// Check reports whether password is user's.
func (h *Htpasswd) Check(user, password string) bool {
	mac := hmac.New(sha256.New, h.key[:])
	mac.Write([]byte(user))
	mac.Write([]byte{0})
	mac.Write([]byte(password))
	var id [32]byte
	copy(id[:], mac.Sum(nil))

	now := h.now()
	h.mu.Lock()
	until, ok := h.verified[id]
	h.mu.Unlock()
	if ok && now.Before(until) {
		return true
	}

	hash, known := h.users[user]
	if !known {
		_ = bcrypt.CompareHashAndPassword(h.dummy, []byte(password))
		return false
	}
	if bcrypt.CompareHashAndPassword(hash, []byte(password)) != nil {
		return false
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if len(h.verified) >= verifiedMax {
		// Expired entries go; if that is not enough, random ones (map
		// order), which only costs their owners one more bcrypt check.
		for k, u := range h.verified {
			if !now.Before(u) || len(h.verified) >= verifiedMax {
				delete(h.verified, k)
			}
		}
	}
	h.verified[id] = now.Add(verifiedTTL)
	return true
}

// File is an htpasswd file that is read again when it changes, so users can
// be added, removed or given new passwords without a restart. A file that
// no longer parses is reported and the previous users stay in force.
type File struct {
	path    string
	current atomic.Pointer[Htpasswd]
	mu      sync.Mutex // serialises Reload
	stamp   fileStamp
}

type fileStamp struct {
	mod  time.Time
	size int64
}

// Open reads path; errors name the file and line.
func Open(path string) (*File, error) {
	f := &File{path: path}
	if _, err := f.Reload(); err != nil {
		return nil, err
	}
	return f, nil
}

// Check implements the server's ClientAuth with the users read last.
func (f *File) Check(user, password string) bool { return f.current.Load().Check(user, password) }

// Users is the number of users read last.
func (f *File) Users() int { return f.current.Load().Users() }

// Reload reads the file again if its modification time or size changed,
// and reports whether it did. On an error the previous users stay. A new
// set of users starts with no remembered logins, so a removed user or an
// old password stops working at once.
func (f *File) Reload() (bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	fi, err := os.Stat(f.path)
	if err != nil {
		return false, err
	}
	st := fileStamp{mod: fi.ModTime(), size: fi.Size()}
	if f.current.Load() != nil && st == f.stamp {
		return false, nil
	}
	h, err := Load(f.path)
	if err != nil {
		return false, err
	}
	f.current.Store(h)
	f.stamp = st
	return true, nil
}
