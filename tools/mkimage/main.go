// Command mkimage builds regcache's container image without a daemon or a
// network (`make image`): it cross-compiles static binaries (CGO_ENABLED=0)
// for each platform, assembles a FROM-scratch OCI index with
// internal/imagebuild, writes it as an OCI layout, and pushes it when asked.
//
// It is a build tool, kept out of the regcache binary so that the product
// does not carry an image writer; run it from the module root:
//
//	go run ./tools/mkimage [-out bin/image] [-push host/repo:tag]
//
// The version, commit and creation time come from git (SOURCE_DATE_EPOCH
// overrides the time), so the same commit builds the same digests.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/regcache/regcache/internal/imagebuild"
)

const buildinfoPkg = "github.com/regcache/regcache/internal/buildinfo"

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	if err := run(ctx, os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "mkimage:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("mkimage", flag.ContinueOnError)
	out := fs.String("out", "bin/image", "OCI layout directory to write (replaced)")
	binDir := fs.String("bin-dir", "bin/image-build", "where the cross-compiled binaries go")
	platforms := fs.String("platforms", "linux/amd64,linux/arm64", "comma-separated platforms")
	push := fs.String("push", "", "also push the index to this reference (host/repo:tag), with the docker config's login")
	caBundle := fs.String("ca-bundle", "/etc/ssl/certs/ca-certificates.crt", "PEM CA bundle to install in the image")
	rootfs := fs.String("rootfs", "deploy/image/rootfs", "files copied into the image as they are")
	source := fs.String("source", "https://github.com/regcache/regcache", "org.opencontainers.image.source")
	version := fs.String("version", "", "version label and `regcache version` (default: git describe)")
	tag := fs.String("tag", "", "ref name in the layout's index.json (default: the version)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	rev, dirty, created, describe, err := fromGit()
	if err != nil {
		return err
	}
	if *version == "" {
		*version = describe
	}
	if *tag == "" {
		*tag = strings.TrimPrefix(*version, "v")
	}
	spec := imagebuild.Spec{Binaries: map[string]string{}, RootFS: *rootfs, CABundle: *caBundle,
		Created: created, Version: *version, Revision: rev, Source: *source}
	ldflags := fmt.Sprintf("-s -w -X %s.version=%s -X %s.commit=%s -X %s.dirty=%t", buildinfoPkg, *version, buildinfoPkg, rev, buildinfoPkg, dirty)
	for _, p := range strings.Split(*platforms, ",") {
		p = strings.TrimSpace(p)
		goos, goarch, ok := strings.Cut(p, "/")
		if !ok || strings.Contains(goarch, "/") {
			return fmt.Errorf("-platforms: %q is not os/arch", p)
		}
		bin := filepath.Join(*binDir, goos+"-"+goarch, "regcache")
		start := time.Now()
		cmd := exec.CommandContext(ctx, "go", "build", "-trimpath", "-buildvcs=false", "-ldflags", ldflags, "-o", bin, "./cmd/regcache")
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS="+goos, "GOARCH="+goarch, "GOFLAGS=-mod=readonly")
		cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
		if err := cmd.Run(); err != nil {
			return fmt.Errorf("go build for %s: %w", p, err)
		}
		fmt.Fprintf(os.Stderr, "mkimage: built %s in %s\n", bin, time.Since(start).Round(time.Millisecond))
		spec.Binaries[p] = bin
	}
	idx, err := imagebuild.Build(spec)
	if err != nil {
		return err
	}
	if err := imagebuild.WriteLayout(*out, *tag, idx); err != nil {
		return fmt.Errorf("-out %s: %w", *out, err)
	}
	d, err := idx.Digest()
	if err != nil {
		return err
	}
	fmt.Printf("%s:%s %s (%s, %s)\n", *out, *tag, d, *platforms, *version)
	if *push == "" {
		return nil
	}
	ref, err := name.ParseReference(*push)
	if err != nil {
		return fmt.Errorf("-push: %w", err)
	}
	if err := remote.WriteIndex(ref, idx, remote.WithContext(ctx), remote.WithAuthFromKeychain(authn.DefaultKeychain)); err != nil {
		return fmt.Errorf("push %s: %w", ref, err)
	}
	fmt.Printf("%s@%s\n", ref.Context(), d)
	return nil
}

// fromGit reads the commit, whether the tree is dirty, the commit's time
// (or SOURCE_DATE_EPOCH) and `git describe`. Outside a git checkout the
// image is still built, as version (devel) created now.
func fromGit() (rev string, dirty bool, created time.Time, describe string, err error) {
	git := func(args ...string) (string, error) {
		out, err := exec.Command("git", args...).Output()
		return strings.TrimSpace(string(out)), err
	}
	created = time.Now()
	describe = "(devel)"
	if r, gerr := git("rev-parse", "HEAD"); gerr == nil {
		rev = r
		if st, _ := git("status", "--porcelain", "--untracked-files=no"); st != "" {
			dirty = true
		}
		if ct, gerr := git("log", "-1", "--format=%ct"); gerr == nil {
			if sec, perr := strconv.ParseInt(ct, 10, 64); perr == nil {
				created = time.Unix(sec, 0)
			}
		}
		if d, gerr := git("describe", "--tags", "--always", "--dirty"); gerr == nil {
			describe = d
		}
	}
	if s := os.Getenv("SOURCE_DATE_EPOCH"); s != "" {
		sec, perr := strconv.ParseInt(s, 10, 64)
		if perr != nil {
			return "", false, time.Time{}, "", errors.New("SOURCE_DATE_EPOCH: want seconds since 1970")
		}
		created = time.Unix(sec, 0)
	}
	return rev, dirty, created.UTC(), describe, nil
}
