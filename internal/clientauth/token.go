package clientauth

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"
)

// TokenTTL is how long a token is valid. Docker Hub's are valid 300 s;
// clients fetch a new one when they need it.
const TokenTTL = 5 * time.Minute

// Claims is what a token grants.
type Claims struct {
	// User is the login the token was issued to; "" for an anonymous
	// token, which opens only the anonymous registries. An anonymous
	// token says nothing else: one issued for a refused login is the same
	// as one issued without a login.
	User string `json:"u,omitempty"`
	// Stamp is the stamp of User's htpasswd entry at issue (File.Valid):
	// the token dies with the entry, in every replica that reads the
	// same file.
	Stamp  string `json:"s,omitempty"`
	Expiry int64  `json:"e"` // unix seconds
}

// Issuer mints and checks regcache's bearer tokens: the claims and an
// HMAC-SHA256 under a key that lives only in this process. They are
// meaningful to this server alone, so no key material has to be managed;
// after a restart clients simply fetch new ones.
//
// Tokens exist because of anonymous access: a Basic challenge makes dockerd
// give up on a mirror when it has no login, while a Bearer challenge lets
// every client (dockerd, containerd, containers/image, go-containerregistry)
// fetch an anonymous token and go on, and the same challenge takes a login
// where there is one.
type Issuer struct {
	key [32]byte
	now func() time.Time
}

// NewIssuer returns an Issuer with a fresh random key.
func NewIssuer() *Issuer {
	i := &Issuer{now: time.Now}
	rand.Read(i.key[:]) // never fails (crypto/rand aborts the program instead)
	return i
}

// MinKeySecret is the shortest shared secret NewIssuerWithSecret accepts.
const MinKeySecret = 32

// NewIssuerWithSecret returns an Issuer whose key is derived from secret,
// so that replicas behind one load balancer accept each other's tokens.
func NewIssuerWithSecret(secret []byte) (*Issuer, error) {
	if len(secret) < MinKeySecret {
		return nil, fmt.Errorf("the secret is %d bytes; at least %d are needed (for example: head -c 48 /dev/urandom | base64)", len(secret), MinKeySecret)
	}
	return &Issuer{now: time.Now, key: sha256.Sum256(append([]byte("regcache token key\x00"), secret...))}, nil
}

// Issue returns a token for c (its Expiry is set here) and its lifetime.
func (i *Issuer) Issue(c Claims) (string, time.Duration) {
	c.Expiry = i.now().Add(TokenTTL).Unix()
	payload, _ := json.Marshal(c)
	p := base64.RawURLEncoding.EncodeToString(payload)
	return p + "." + base64.RawURLEncoding.EncodeToString(i.sign(p)), TokenTTL
}

// ErrBadToken is any token this server did not issue, or issued too long ago.
var ErrBadToken = errors.New("invalid or expired token")

// Verify returns the claims of a token this Issuer made that has not expired.
func (i *Issuer) Verify(tok string) (Claims, error) {
	p, sig, ok := strings.Cut(tok, ".")
	if !ok {
		return Claims{}, ErrBadToken
	}
	got, err := base64.RawURLEncoding.DecodeString(sig)
	if err != nil || !hmac.Equal(got, i.sign(p)) {
		return Claims{}, ErrBadToken
	}
	payload, err := base64.RawURLEncoding.DecodeString(p)
	if err != nil {
		return Claims{}, ErrBadToken
	}
	var c Claims
	if err := json.Unmarshal(payload, &c); err != nil || i.now().Unix() >= c.Expiry {
		return Claims{}, ErrBadToken
	}
	return c, nil
}

func (i *Issuer) sign(payload string) []byte {
	m := hmac.New(sha256.New, i.key[:])
	m.Write([]byte(payload))
	return m.Sum(nil)
}
