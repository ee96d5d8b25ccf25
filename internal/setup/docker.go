package setup

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
)

func dockerTarget() Target {
	return Target{
		Name:     "docker",
		Short:    "dockerd: daemon.json registry-mirrors, or with --hosts-toml Docker Engine 29's certs.d/<registry>/hosts.toml",
		Writable: true,
		Build: func(o Options) (Plan, error) {
			if o.HostsTOML {
				return dockerHostsTOML(o)
			}
			p, s, err := o.filePlan("etc/docker/daemon.json", func(s server) string { return certsDCA("etc/docker/certs.d", s) }, mergeDaemonJSON)
			if err != nil {
				return Plan{}, err
			}
			p.Notes = append(p.Notes,
				"Apply: sudo systemctl reload docker   (dockerd re-reads registry-mirrors and insecure-registries on SIGHUP)",
				"dockerd sends only docker.io pulls to registry-mirrors, as /v2/library/<name>/...; regcache serves them from docker.io. When the mirror fails, dockerd pulls from Docker Hub instead, without an error: watch regcache's metrics.")
			if s.ca != "" {
				p.Notes = append(p.Notes, "dockerd trusts regcache's CA from "+s.ca+" (read on every pull, no reload needed).")
			}
			var others []string
			for _, r := range o.registries() {
				if r != "docker.io" {
					others = append(others, r)
				}
			}
			if len(others) > 0 {
				p.Notes = append(p.Notes, fmt.Sprintf("%s: registry-mirrors covers docker.io only. On Docker Engine 29+ with the containerd image store use --hosts-toml; otherwise rewrite references (regcache rewrite --to %s).", strings.Join(others, ", "), s.host))
			}
			p.Notes = append(p.Notes, "Docker Engine 29+ with the containerd image store (the default on new installs; docker info -f '{{.DriverStatus}}' shows io.containerd.snapshotter.v1) also reads /etc/docker/certs.d/<registry>/hosts.toml, which can send any registry through regcache: regcache setup docker --hosts-toml.")
			p.Notes = append(p.Notes, mirrorLoginNotes(s, "dockerd", dockerLogin(s, ""))...)
			return p, nil
		},
	}
}

// dockerHostsTOML is the Docker Engine 29 route: with the containerd image
// store, dockerd reads containerd-style hosts.toml files from
// /etc/docker/certs.d/<registry>/, which give mirrors for every registry
// and a CA per host.
func dockerHostsTOML(o Options) (Plan, error) {
	s, err := o.server()
	if err != nil {
		return Plan{}, err
	}
	dir := o.path("etc/docker/certs.d")
	var p Plan
	caDir := "etc/docker/certs.d"
	if o.Path != "" {
		caDir = dir
	}
	s = o.installCA(&p, s, certsDCA(caDir, s))
	p.Files = append(hostsTOMLFiles(dir, o.registries(), s), p.Files...)
	p.Notes = append(p.Notes,
		"For Docker Engine 29+ with the containerd image store (docker info -f '{{.DriverStatus}}' shows io.containerd.snapshotter.v1). dockerd reads these files on every pull: no restart. Older engines and the classic image store ignore them: use regcache setup docker without --hosts-toml.",
		"regcache is tried first and receives ?ns=<registry>; when it fails, dockerd pulls from the registry itself, without an error: watch regcache's metrics.",
		"A hosts.toml with a mirror overrides daemon.json's registry-mirrors and insecure-registries for its registry, so TLS settings for regcache live here.")
	p.Notes = append(p.Notes, mirrorLoginNotes(s, "dockerd", dockerLogin(s, ""))...)
	return p, nil
}

// dockerLogin is the command that logs the docker CLI in to regcache with
// the password from the job's environment, never from its command line.
func dockerLogin(s server, sudo string) string {
	return fmt.Sprintf("printf '%%s' \"$%s\" | %sdocker login --username %s --password-stdin %s", s.login.env, sudo, s.login.user, s.host)
}

// mirrorLoginNotes says, for a cache with client_auth, what a client that
// cannot log in to a mirror needs, and how references rewritten to the
// cache log in (how).
func mirrorLoginNotes(s server, client, how string) []string {
	if s.login.user == "" {
		return nil
	}
	notes := []string{
		fmt.Sprintf("client_auth: %s sends no regcache login with mirror pulls, so regcache must list these registries in client_auth.anonymous_registries, and then anyone who reaches it can pull them through it: keep such a cache on a private network. References rewritten to %s/... use the login: %s", client, s.host, how),
	}
	if s.scheme == "http" {
		notes = append(notes, "The login crosses the network in clear over plain http: serve regcache with tls.")
	}
	return notes
}

// member is one top-level key of daemon.json, kept in file order.
type member struct {
	key string
	val json.RawMessage
}

// mergeDaemonJSON adds the regcache mirror to daemon.json. Other keys keep
// their order and values; the output is indented with two spaces, so a
// second merge returns the same bytes.
func mergeDaemonJSON(src []byte, s server) ([]byte, error) {
	members, err := parseObject(src)
	if err != nil {
		return nil, fmt.Errorf("daemon.json: %w", err)
	}
	members, err = addToList(members, "registry-mirrors", s.url(), true)
	if err != nil {
		return nil, err
	}
	if s.insecure {
		members, err = addToList(members, "insecure-registries", s.host, false)
		if err != nil {
			return nil, err
		}
	}
	var buf bytes.Buffer
	buf.WriteString("{")
	for i, m := range members {
		if i > 0 {
			buf.WriteString(",")
		}
		k, _ := json.Marshal(m.key)
		buf.WriteString("\n  ")
		buf.Write(k)
		buf.WriteString(": ")
		if err := json.Indent(&buf, m.val, "  ", "  "); err != nil {
			return nil, err
		}
	}
	if len(members) > 0 {
		buf.WriteString("\n")
	}
	buf.WriteString("}\n")
	return buf.Bytes(), nil
}

func parseObject(src []byte) ([]member, error) {
	if len(bytes.TrimSpace(src)) == 0 {
		return nil, nil
	}
	dec := json.NewDecoder(bytes.NewReader(src))
	dec.UseNumber()
	tok, err := dec.Token()
	if err != nil {
		return nil, jsonErr(src, dec, err)
	}
	if d, ok := tok.(json.Delim); !ok || d != '{' {
		return nil, errors.New("top level is not a JSON object")
	}
	var out []member
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return nil, jsonErr(src, dec, err)
		}
		key, _ := tok.(string)
		var raw json.RawMessage
		if err := dec.Decode(&raw); err != nil {
			return nil, jsonErr(src, dec, err)
		}
		for _, m := range out {
			if m.key == key {
				return nil, fmt.Errorf("duplicate key %q", key)
			}
		}
		out = append(out, member{key, raw})
	}
	if _, err := dec.Token(); err != nil {
		return nil, jsonErr(src, dec, err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, errors.New("trailing data after the JSON object")
	}
	return out, nil
}

func jsonErr(src []byte, dec *json.Decoder, err error) error {
	off := int(dec.InputOffset())
	// A Decoder's SyntaxError offset is relative to its internal buffer;
	// decoding the whole input again gives the offset in the file.
	var v any
	var se *json.SyntaxError
	if errors.As(json.Unmarshal(src, &v), &se) {
		off = int(se.Offset) - 1 // Offset counts the offending byte
	}
	if off < 0 {
		off = 0
	}
	if off > len(src) {
		off = len(src)
	}
	line := 1 + bytes.Count(src[:off], []byte("\n"))
	return fmt.Errorf("line %d: %v", line, err)
}

// addToList ensures value is in the string list at key, first (mirrors are
// tried in order) or last. A value already present anywhere is left where
// the user put it.
func addToList(members []member, key, value string, first bool) ([]member, error) {
	norm := func(s string) string { return strings.TrimSuffix(s, "/") }
	for i, m := range members {
		if m.key != key {
			continue
		}
		var list []string
		if err := json.Unmarshal(m.val, &list); err != nil {
			return nil, fmt.Errorf("daemon.json: %q is not a list of strings", key)
		}
		for _, v := range list {
			if norm(v) == norm(value) {
				return members, nil
			}
		}
		if first {
			list = append([]string{value}, list...)
		} else {
			list = append(list, value)
		}
		raw, _ := json.Marshal(list)
		members[i].val = raw
		return members, nil
	}
	raw, _ := json.Marshal([]string{value})
	return append(members, member{key, raw}), nil
}
