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
		Short:    "dockerd daemon.json: registry-mirrors (+ insecure-registries for http)",
		Writable: true,
		Build: func(o Options) (Plan, error) {
			p, s, err := o.filePlan("etc/docker/daemon.json", mergeDaemonJSON)
			if err != nil {
				return Plan{}, err
			}
			p.Files = append(p.Files, o.caFile(s, "etc/docker/certs.d")...)
			p.Notes = append(p.Notes,
				"Apply: sudo systemctl reload docker   (dockerd re-reads registry-mirrors and insecure-registries on SIGHUP)",
				"dockerd sends only docker.io pulls to registry-mirrors, as /v2/library/<name>/...; regcache serves them from docker.io.")
			for _, r := range o.registries() {
				if r != "docker.io" {
					p.Notes = append(p.Notes, fmt.Sprintf("%s: dockerd has no mirror setting for registries other than docker.io; use \"regcache rewrite --to %s\" or the containerd image store with \"regcache setup containerd\".", r, s.host))
				}
			}
			return p, nil
		},
	}
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
