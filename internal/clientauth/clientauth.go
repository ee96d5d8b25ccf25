// Package clientauth checks the logins that clients present to regcache
// itself: users from an htpasswd file of bcrypt hashes, the format
// Distribution, zot and nginx read (`htpasswd -B`), read again when it
// changes (File); the policy that keeps password guessing slow for the
// guesser and cheap for the server (Logins); and the short-lived bearer
// tokens regcache issues (Issuer).
//
// bcrypt is slow on purpose (tens of milliseconds to a second a check), so
// a check is also the easiest way to make the server work. Logins
// therefore remembers recent answers, backs off clients and user names
// that fail, and lets only a few checks run at once.
package clientauth

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"fmt"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/crypto/bcrypt"
)

// Htpasswd is a set of users with bcrypt password hashes, as read from one
// version of the file.
type Htpasswd struct {
	users map[string][]byte
	// stamps identify each user's entry (name and hash). A token carries
	// its user's stamp, so it stops working when the entry changes or goes.
	stamps map[string]string
	// maxCost is the highest bcrypt cost in the file. Every check does the
	// work of one check at that cost (see check).
	maxCost int
	// pads[c] is a hash of cost c that no password matches; comparing
	// against pads makes up the time a cheaper or missing entry saves.
	pads map[int][]byte
	// compare is bcrypt.CompareHashAndPassword; a seam for tests.
	compare func(hash, password []byte) error
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
	h := &Htpasswd{users: map[string][]byte{}, stamps: map[string]string{}, pads: map[int][]byte{}, compare: bcrypt.CompareHashAndPassword}
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
		cost, err := bcrypt.Cost([]byte(hash))
		if err != nil {
			return nil, fmt.Errorf("%s:%d: user %q: only bcrypt hashes are supported (create them with htpasswd -B)", source, n, user)
		}
		h.users[user] = []byte(hash)
		h.stamps[user] = stamp(user, hash)
		h.maxCost = max(h.maxCost, cost)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("%s: %w", source, err)
	}
	if len(h.users) == 0 {
		return nil, fmt.Errorf("%s: no users", source)
	}
	if err := h.makePads(); err != nil {
		return nil, err
	}
	return h, nil
}

// makePads makes a hash for every cost up to maxCost. Only the cheapest is
// computed: a bcrypt hash names its cost in its text, and comparing
// against the same salt and digest under another cost does that cost's
// work and matches nothing.
func (h *Htpasswd) makePads() error {
	secret := make([]byte, 32)
	rand.Read(secret)
	base, err := bcrypt.GenerateFromPassword(secret, bcrypt.MinCost)
	if err != nil {
		return err
	}
	for c := bcrypt.MinCost; c <= h.maxCost; c++ {
		pad := append([]byte(nil), base...)
		copy(pad[4:6], fmt.Sprintf("%02d", c)) // "$2a$04$…"
		if got, err := bcrypt.Cost(pad); err != nil || got != c {
			return fmt.Errorf("bcrypt pad of cost %d: %v", c, err)
		}
		h.pads[c] = pad
	}
	return nil
}

// stamp is a short digest of an htpasswd entry. It names no secret: the
// hash it digests is itself a salted hash.
func stamp(user, hash string) string {
	sum := sha256.Sum256([]byte("regcache htpasswd entry\x00" + user + "\x00" + hash))
	return base64.RawURLEncoding.EncodeToString(sum[:12])
}

// Users is the number of users in the file.
func (h *Htpasswd) Users() int { return len(h.users) }

// check reports whether password is user's. Whether the user exists or
// not, and whatever the cost of their hash, it does the work of one bcrypt
// check at the file's highest cost, so the time it takes tells nothing: an
// unknown user is compared against the pad of that cost; a user whose hash
// has cost c is compared against it (2^c rounds) and then against the pads
// of costs c, c+1, …, max-1, which add up to the 2^max - 2^c rounds that
// remain.
func (h *Htpasswd) check(user, password string) bool {
	pw := []byte(password)
	hash, known := h.users[user]
	if !known {
		_ = h.compare(h.pads[h.maxCost], pw)
		return false
	}
	ok := h.compare(hash, pw) == nil
	cost, _ := bcrypt.Cost(hash)
	for c := cost; c < h.maxCost; c++ {
		_ = h.compare(h.pads[c], pw)
	}
	return ok
}

// sameEntry reports whether user has the same entry (or none) in h and o.
func (h *Htpasswd) sameEntry(o *Htpasswd, user string) bool {
	a, inH := h.users[user]
	b, inO := o.users[user]
	return inH == inO && bytes.Equal(a, b)
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

// Users is the number of users read last.
func (f *File) Users() int { return f.current.Load().Users() }

// Valid reports whether stamp is still that of user's entry in the file as
// read last: a token of a user who has been removed, or whose password has
// changed, is no longer good.
func (f *File) Valid(user, stamp string) bool {
	s, ok := f.current.Load().stamps[user]
	return ok && s == stamp
}

// Reload reads the file again if its modification time or size changed,
// and reports whether it did. On an error the previous users stay. Logins
// forgets what it remembered about the entries that changed, and tokens of
// removed users or old passwords stop working, at once.
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
