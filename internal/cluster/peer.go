package cluster

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/opencontainers/go-digest"
)

// PeerPath is where a replica serves the blobs it is downloading (or has
// stored) to the other replicas. It is never open to clients: every
// request must carry PeerHeader, an HMAC of the request under the shared
// secret, and it never causes an upstream fetch.
const PeerPath = "/_regcache/peer/blobs/"

// PeerHeader carries a peer request's signature: "<unix seconds>.<hmac>".
const PeerHeader = "X-Regcache-Peer"

// peerSkew is how far a signature's time may be from this replica's clock.
const peerSkew = time.Minute

// ErrPeerNotFound is OpenPeer's error when the holder has neither the
// download nor the blob (it finished and failed, or restarted).
var ErrPeerNotFound = errors.New("the replica holding the download does not have it")

func (c *Coordinator) sign(method, path string, at time.Time) string {
	ts := strconv.FormatInt(at.Unix(), 10)
	m := hmac.New(sha256.New, c.secret)
	io.WriteString(m, method+"\n"+path+"\n"+ts)
	return ts + "." + hex.EncodeToString(m.Sum(nil))
}

// VerifyPeer checks a peer request's signature.
func (c *Coordinator) VerifyPeer(r *http.Request) error {
	v := r.Header.Get(PeerHeader)
	ts, _, ok := strings.Cut(v, ".")
	if !ok {
		return errors.New("no peer signature")
	}
	secs, err := strconv.ParseInt(ts, 10, 64)
	if err != nil {
		return errors.New("bad peer signature")
	}
	at := time.Unix(secs, 0)
	if d := c.now().Sub(at); d > peerSkew || d < -peerSkew {
		return errors.New("peer signature too old or from the future (check the replicas' clocks)")
	}
	if !hmac.Equal([]byte(v), []byte(c.sign(r.Method, r.URL.Path, at))) {
		return errors.New("bad peer signature")
	}
	return nil
}

// peerClient reaches the other replicas: their addresses are internal, so
// redirects are not followed and the waits are short.
var peerTransport = &http.Transport{
	DialContext:           (&net.Dialer{Timeout: 2 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
	ResponseHeaderTimeout: 10 * time.Second,
	MaxIdleConnsPerHost:   16,
	IdleConnTimeout:       90 * time.Second,
}

// OpenPeer streams blob d from the replica holder, which is downloading
// it. The body is verified as it is read: io.EOF only for bytes that hash
// to d. size is the announced size, or -1.
func (c *Coordinator) OpenPeer(ctx context.Context, holder string, d digest.Digest) (body io.ReadCloser, size int64, err error) {
	if holder == c.self {
		return nil, 0, errors.New("cluster: asked to stream from itself")
	}
	if !d.Algorithm().Available() {
		return nil, 0, fmt.Errorf("cluster: unsupported digest %s", d)
	}
	path := PeerPath + d.String()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, holder+path, nil)
	if err != nil {
		return nil, 0, err
	}
	req.Header.Set(PeerHeader, c.sign(http.MethodGet, path, c.now()))
	client := &http.Client{Transport: peerTransport, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	resp, err := client.Do(req)
	if err != nil {
		return nil, 0, fmt.Errorf("cluster: peer %s: %w", holder, err)
	}
	switch resp.StatusCode {
	case http.StatusOK:
	case http.StatusNotFound:
		resp.Body.Close()
		return nil, 0, ErrPeerNotFound
	default:
		resp.Body.Close()
		return nil, 0, fmt.Errorf("cluster: peer %s answered %s", holder, resp.Status)
	}
	return &verified{rc: resp.Body, want: d, h: d.Algorithm().Hash(), size: resp.ContentLength}, resp.ContentLength, nil
}

// verified hashes a peer's stream and fails its last Read unless the
// bytes match their digest: a peer is trusted no more than an upstream.
type verified struct {
	rc   io.ReadCloser
	want digest.Digest
	h    hash.Hash
	size int64
	n    int64
}

func (v *verified) Read(p []byte) (int, error) {
	n, err := v.rc.Read(p)
	v.h.Write(p[:n])
	v.n += int64(n)
	if err == io.EOF {
		if v.size >= 0 && v.n != v.size {
			return n, fmt.Errorf("cluster: peer stream ended after %d of %d bytes", v.n, v.size)
		}
		if got := digest.NewDigest(v.want.Algorithm(), v.h); got != v.want {
			return n, fmt.Errorf("cluster: peer stream hashes to %s, not %s", got, v.want)
		}
	}
	return n, err
}

func (v *verified) Close() error { return v.rc.Close() }
