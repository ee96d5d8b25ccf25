package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"strings"
	"syscall"
	"time"
)

// stalledClients: a cached blob and a blob in flight, each asked for by
// half the clients, none of which reads. The peak is VmHWM (the process's
// highest RSS so far) after the clients have sat for 8 s; then they close, and 10 s later RSS is
// read again (the download they joined is still in flight, held by the
// upstream, so that what is measured is what the clients held).
func stalledClients(bin, work string, up *upstream, clients int) (result, error) {
	r := result{scenario: "clients"}
	up.rearm()
	defer up.releaseCold()
	rc, err := startRegcache(bin, work, up.url)
	if err != nil {
		return r, err
	}
	defer rc.stop()
	ctx := context.Background()
	base := rc.url + "/v2/bench.example/bench/"
	// The cached blob is cached; the cold one's manifest is known.
	for _, p := range []string{"cached/manifests/v1", "cached/blobs/" + up.cached, "cold/manifests/v1"} {
		accept := ""
		if strings.Contains(p, "manifests") {
			accept = acceptTypes
		}
		if _, err := get(ctx, base+p, accept); err != nil {
			return r, err
		}
	}
	time.Sleep(2 * time.Second)
	r.before = rc.status("VmRSS")
	addr := strings.TrimPrefix(rc.url, "http://")
	var conns []net.Conn
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	for i := range clients {
		path := "/v2/bench.example/bench/cold/blobs/" + up.cold
		if i%2 == 1 {
			path = "/v2/bench.example/bench/cached/blobs/" + up.cached
		}
		c, err := stalledClient(addr, path)
		if err != nil {
			return r, fmt.Errorf("client %d: %w", i, err)
		}
		conns = append(conns, c)
	}
	time.Sleep(8 * time.Second)
	r.peak = rc.status("VmHWM")
	for _, c := range conns {
		c.Close()
	}
	conns = nil
	time.Sleep(10 * time.Second)
	r.after = rc.status("VmRSS")
	return r, nil
}

// stalledClient opens a connection with a receive buffer as small as the
// kernel allows, sends one GET and never reads.
func stalledClient(addr, path string) (net.Conn, error) {
	d := net.Dialer{Timeout: 10 * time.Second, Control: func(_, _ string, c syscall.RawConn) error {
		var serr error
		err := c.Control(func(fd uintptr) { serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 4096) })
		return errors.Join(err, serr)
	}}
	conn, err := d.Dial("tcp", addr)
	if err != nil {
		return nil, err
	}
	if _, err := fmt.Fprintf(conn, "GET %s HTTP/1.1\r\nHost: %s\r\n\r\n", path, addr); err != nil {
		conn.Close()
		return nil, err
	}
	return conn, nil
}

// listQueries: distinct queries of one 600,000-tag list, half pages of
// 300,000 to 330,000 tags, half pages after a tag; each is read whole
// and checked. The peak is VmHWM after the last.
func listQueries(bin, work string, up *upstream, queries int) (result, error) {
	r := result{scenario: "list"}
	rc, err := startRegcache(bin, work, up.url)
	if err != nil {
		return r, err
	}
	defer rc.stop()
	ctx := context.Background()
	time.Sleep(2 * time.Second)
	r.before = rc.status("VmRSS")
	before := up.listRequests.Load()
	for i := range queries {
		q := fmt.Sprintf("?n=%d", 300_000+i*500)
		if i%2 == 1 {
			q = fmt.Sprintf("?n=300000&last=v%07d", i*1000)
		}
		b, err := get(ctx, rc.url+"/v2/bench.example/bench/tags/tags/list"+q, "")
		if err != nil {
			return r, err
		}
		var doc struct{ Tags []string }
		if err := json.Unmarshal(b, &doc); err != nil || len(doc.Tags) < 200_000 {
			return r, fmt.Errorf("query %s: %d tags, %v", q, len(doc.Tags), err)
		}
	}
	r.peak = rc.status("VmHWM")
	r.upstream = int(up.listRequests.Load() - before)
	time.Sleep(10 * time.Second)
	r.after = rc.status("VmRSS")
	return r, nil
}
