package main

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"runtime"
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
	var jobs int
	cmd := &cobra.Command{
		Use:   "warm --server URL [--platform os/arch ...] [-f FILE] [IMAGE...]",
		Short: "Pull images through a running regcache so that they are cached before CI needs them",
		Long: `Pull images through a running regcache server, every manifest and blob, so
that the day's builds find them cached: after deploying regcache, before a
release, or from a nightly job. IMAGE is written as in a Dockerfile (node:21,
ghcr.io/org/app:v1, name@sha256:...); -f reads more, one per line ("-" for
stdin, # comments), for example:

  regcache scan --json . | jq -r '.references[].normalized | select(. != null)' | regcache warm --server cache:5000 -f -

--platform selects the images of a multi-platform index (default: this
machine's, as docker pull does; "all" for every one). A server with
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
			return runWarm(cmd.Context(), opt, refs, cmd.OutOrStdout())
		},
	}
	f := cmd.Flags()
	f.StringVar(&server, "server", "http://127.0.0.1:5000", "regcache address: http://host:port or https://host")
	f.StringVar(&caFile, "ca-file", "", "PEM CA certificate to trust for an https server, besides the system's")
	f.StringVar(&user, "username", "", "login for a server with client_auth (password from $"+passwordEnv+")")
	f.StringSliceVar(&platforms, "platform", []string{runtime.GOOS + "/" + runtime.GOARCH}, `platforms to pull from multi-platform images, or "all"`)
	f.StringVarP(&file, "file", "f", "", `read images from FILE, one per line ("-": stdin)`)
	f.IntVar(&jobs, "jobs", 4, "blobs fetched at once per image")
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

func runWarm(ctx context.Context, opt warm.Options, refs []string, out io.Writer) error {
	failed := 0
	var bytes int64
	start := time.Now()
	for _, ref := range refs {
		r := warm.Image(ctx, opt, ref)
		if r.Err != nil {
			failed++
			fmt.Fprintf(out, "FAIL  %s: %v\n", ref, r.Err)
			continue
		}
		bytes += r.Bytes
		fmt.Fprintf(out, "ok    %s  %s  %d manifests, %d blobs, %s in %s\n", ref, r.Digest, r.Manifests, r.Blobs,
			humanBytes(r.Bytes), r.Duration.Round(time.Millisecond))
	}
	fmt.Fprintf(out, "%d of %d images warmed, %s in %s\n", len(refs)-failed, len(refs), humanBytes(bytes), time.Since(start).Round(time.Millisecond))
	if failed > 0 {
		return fmt.Errorf("%d image(s) could not be warmed", failed)
	}
	return nil
}

func humanBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}
