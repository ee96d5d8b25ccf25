package main

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"runtime"
	"strconv"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/spf13/cobra"

	"github.com/regcache/regcache/internal/warm"
)

// passwordEnv holds the login for a server with client_auth; a flag would
// put it in the process list and shell history.
const passwordEnv = "REGCACHE_PASSWORD"

func newWarmCmd() *cobra.Command {
	var server, caFile, user, file string
	var platforms []string
	var jobs, concurrency int
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "warm --server URL [--platform os/arch ...] [-f FILE] [IMAGE...]",
		Short: "Pull images through a running regcache so that they are cached before CI needs them",
		Long: `Pull images through a running regcache server, every manifest and blob, so
that the day's builds find them cached: after deploying regcache, before a
release, or from a nightly job. IMAGE is written as in a Dockerfile (node:21,
ghcr.io/org/app:v1, name@sha256:...); -f reads more, one per line ("-" for
stdin, # comments), for example:

  regcache scan --json . | jq -r '.references[].normalized | select(. != null)' | regcache warm --server cache:5000 -f -

Up to --concurrency images are warmed at once. Each prints a line when it
ends; on a terminal the images in progress are shown below those lines with
their layers and bytes so far. --json prints one JSON document at the end
instead: {"images": [{"ref", "digest", "manifests", "layers", "blobs",
"bytes", "seconds", "error"}...], "warmed", "failed", "bytes", "seconds"}.

--platform selects the images of a multi-platform index (default:
linux/<this machine's architecture>, as docker pull does on Linux, macOS and
Windows alike; "all" for every one). A server with
client_auth takes the login from the docker config (docker login SERVER) or
from --username and the ` + passwordEnv + ` environment variable.`,
		RunE: func(cmd *cobra.Command, args []string) error {
			refs, err := warmRefs(args, file, cmd.InOrStdin())
			if err != nil {
				return err
			}
			opt, err := warmOptions(server, caFile, user, platforms, jobs)
			if err != nil {
				return err
			}
			if concurrency < 1 {
				return fmt.Errorf("--concurrency %d: want at least 1", concurrency)
			}
			return runWarm(cmd.Context(), opt, refs, concurrency, asJSON, cmd.OutOrStdout())
		},
	}
	f := cmd.Flags()
	f.StringVar(&server, "server", "http://127.0.0.1:5000", "regcache address: http://host:port or https://host")
	f.StringVar(&caFile, "ca-file", "", "PEM CA certificate to trust for an https server, besides the system's")
	f.StringVar(&user, "username", "", "login for a server with client_auth (password from $"+passwordEnv+")")
	// linux/<arch> whatever the host OS, as docker pulls on a Mac or in WSL.
	f.StringSliceVar(&platforms, "platform", []string{"linux/" + runtime.GOARCH}, `platforms to pull from multi-platform images, or "all"`)
	f.StringVarP(&file, "file", "f", "", `read images from FILE, one per line ("-": stdin)`)
	f.IntVar(&jobs, "jobs", 4, "blobs fetched at once per image")
	f.IntVar(&concurrency, "concurrency", 4, "images warmed at once")
	f.BoolVar(&asJSON, "json", false, "print one JSON document at the end instead of lines")
	return cmd
}

// warmRefs collects the images from the arguments and the file, without
// duplicates, in order.
func warmRefs(args []string, file string, stdin io.Reader) ([]string, error) {
	refs := append([]string(nil), args...)
	if file != "" {
		var r io.Reader = stdin
		if file != "-" {
			f, err := os.Open(file)
			if err != nil {
				return nil, fmt.Errorf("-f: %w", err)
			}
			defer f.Close()
			r = f
		}
		sc := bufio.NewScanner(r)
		for sc.Scan() {
			if line := strings.TrimSpace(sc.Text()); line != "" && !strings.HasPrefix(line, "#") {
				refs = append(refs, line)
			}
		}
		if err := sc.Err(); err != nil {
			return nil, fmt.Errorf("-f %s: %w", file, err)
		}
	}
	seen := map[string]bool{}
	out := refs[:0]
	for _, r := range refs {
		if !seen[r] {
			seen[r] = true
			out = append(out, r)
		}
	}
	if len(out) == 0 {
		return nil, errors.New("no images given: name them as arguments or with -f")
	}
	return out, nil
}

func warmOptions(server, caFile, user string, platforms []string, jobs int) (warm.Options, error) {
	if !strings.Contains(server, "://") {
		server = "http://" + server
	}
	u, err := url.Parse(server)
	if err != nil || u.Host == "" || (u.Scheme != "http" && u.Scheme != "https") || strings.Trim(u.Path, "/") != "" {
		return warm.Options{}, fmt.Errorf("--server %q: want http://host:port or https://host", server)
	}
	opt := warm.Options{Server: u.Host, Insecure: u.Scheme == "http", Jobs: jobs, Keychain: authn.DefaultKeychain}
	tr := remote.DefaultTransport.(*http.Transport).Clone()
	if caFile != "" {
		pem, err := os.ReadFile(caFile)
		if err != nil {
			return opt, fmt.Errorf("--ca-file: %w", err)
		}
		pool, err := x509.SystemCertPool()
		if err != nil {
			pool = x509.NewCertPool()
		}
		if !pool.AppendCertsFromPEM(pem) {
			return opt, fmt.Errorf("--ca-file %s: no PEM certificate in it", caFile)
		}
		tr.TLSClientConfig = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	}
	opt.Transport = tr
	if user != "" {
		pw, ok := os.LookupEnv(passwordEnv)
		if !ok {
			return opt, fmt.Errorf("--username %s: set the password in $%s", user, passwordEnv)
		}
		opt.Keychain = staticKeychain{host: u.Host, auth: &authn.Basic{Username: user, Password: pw}}
	}
	for _, p := range platforms {
		if p == "all" {
			opt.Platforms = nil
			break
		}
		pl, err := v1.ParsePlatform(p)
		if err == nil && (pl.OS == "" || pl.Architecture == "") {
			err = errors.New("want os/arch[/variant], such as linux/amd64 or linux/arm/v7, or all")
		}
		if err != nil {
			return opt, fmt.Errorf("--platform %q: %w", p, err)
		}
		opt.Platforms = append(opt.Platforms, *pl)
	}
	return opt, nil
}

// staticKeychain gives one login to one host and nothing to any other, so
// the password never goes anywhere but the server.
type staticKeychain struct {
	host string
	auth authn.Authenticator
}

func (k staticKeychain) Resolve(r authn.Resource) (authn.Authenticator, error) {
	if r.RegistryStr() == k.host {
		return k.auth, nil
	}
	return authn.Anonymous, nil
}

// warmReport is the --json document: one object for the whole run.
type warmReport struct {
	Images  []warmImage `json:"images"`
	Warmed  int         `json:"warmed"`
	Failed  int         `json:"failed"`
	Bytes   int64       `json:"bytes"`
	Seconds float64     `json:"seconds"`
}

type warmImage struct {
	Ref       string  `json:"ref"`
	Digest    string  `json:"digest,omitempty"`
	Manifests int     `json:"manifests"`
	Layers    int     `json:"layers"`
	Blobs     int     `json:"blobs"`
	Bytes     int64   `json:"bytes"`
	Seconds   float64 `json:"seconds"`
	Error     string  `json:"error,omitempty"`
}

// runWarm warms refs, concurrency at a time, and reports on out: a line per
// image as it ends (with live progress when out is a terminal) and a
// summary, or, asJSON, one JSON document at the end.
func runWarm(ctx context.Context, opt warm.Options, refs []string, concurrency int, asJSON bool, out io.Writer) error {
	start := time.Now()
	progress := make([]*warm.Progress, len(refs))
	for i := range progress {
		progress[i] = &warm.Progress{}
	}
	var done func(int, warm.Result)
	if !asJSON {
		tty, width := terminal(out)
		d := warm.NewDisplay(out, tty, width, refs, progress)
		done = d.Done
		if tty {
			stop := make(chan struct{})
			redrawn := make(chan struct{})
			go func() {
				defer close(redrawn)
				t := time.NewTicker(200 * time.Millisecond)
				defer t.Stop()
				for {
					select {
					case <-stop:
						return
					case <-t.C:
						d.Redraw()
					}
				}
			}()
			defer func() { close(stop); <-redrawn; d.Finish() }()
		}
	}
	results := warm.All(ctx, opt, refs, concurrency, progress, done)
	rep := warmReport{Seconds: time.Since(start).Seconds()}
	for _, r := range results {
		img := warmImage{Ref: r.Ref, Digest: r.Digest, Manifests: r.Manifests, Layers: r.Layers, Blobs: r.Blobs, Bytes: r.Bytes, Seconds: r.Duration.Seconds()}
		if r.Err != nil {
			img.Error = r.Err.Error()
			rep.Failed++
		} else {
			rep.Warmed++
		}
		rep.Bytes += r.Bytes
		rep.Images = append(rep.Images, img)
	}
	if asJSON {
		enc := json.NewEncoder(out)
		enc.SetIndent("", "  ")
		if err := enc.Encode(rep); err != nil {
			return err
		}
	} else {
		fmt.Fprintf(out, "%d of %d images warmed, %s in %s\n", rep.Warmed, len(refs), warm.HumanBytes(rep.Bytes), time.Since(start).Round(time.Millisecond))
	}
	if rep.Failed > 0 {
		return fmt.Errorf("%d image(s) could not be warmed", rep.Failed)
	}
	return nil
}

// terminal says whether out is a terminal that understands cursor
// movement, and how wide it is ($COLUMNS, else 80).
func terminal(out io.Writer) (bool, int) {
	f, ok := out.(*os.File)
	if !ok || os.Getenv("TERM") == "dumb" {
		return false, 0
	}
	fi, err := f.Stat()
	if err != nil || fi.Mode()&os.ModeCharDevice == 0 {
		return false, 0
	}
	width, _ := strconv.Atoi(os.Getenv("COLUMNS"))
	return true, width
}
