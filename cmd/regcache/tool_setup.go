package main

import (
	"fmt"
	"os"
	"strings"

	"github.com/regcache/regcache/internal/setup"
	"github.com/spf13/cobra"
)

func newSetupCmd() *cobra.Command {
	var (
		o      setup.Options
		write  bool
		buildx bool
	)
	var lines []string
	for _, t := range setup.Targets() {
		mode := "print"
		if t.Writable {
			mode = "print or --write"
		}
		lines = append(lines, fmt.Sprintf("  %-15s %s (%s)", t.Name, t.Short, mode))
	}
	targets := strings.Join(lines, "\n")
	cmd := &cobra.Command{
		Use:   "setup <target> --server URL",
		Short: "Print or install the client configuration that sends pulls through regcache",
		Long: `setup prints the configuration a client needs to pull through regcache, or
installs it with --write. Targets:

` + targets + `

--write merges into the existing file (other keys and comments stay), keeps
the previous version as <file>.bak, and changes nothing when the file is
already right, so running it twice gives byte-identical files.

For a regcache with client_auth, --username names the login that hosts and
jobs use; jobs read its password from the variable --password-env names
(default ` + setup.DefaultPasswordEnv + `). setup never takes the password itself.`,
		Args: func(cmd *cobra.Command, args []string) error {
			switch {
			case len(args) == 0:
				return fmt.Errorf("which target? regcache setup <target> --server URL, with <target> one of:\n%s", targets)
			case len(args) > 1:
				return fmt.Errorf("one target at a time, got %d: %s", len(args), strings.Join(args, " "))
			}
			if _, ok := setup.Lookup(args[0]); !ok {
				return fmt.Errorf("unknown target %q; the targets are:\n%s", args[0], targets)
			}
			return nil
		},
		ValidArgsFunction: func(cmd *cobra.Command, args []string, toComplete string) ([]cobra.Completion, cobra.ShellCompDirective) {
			if len(args) > 0 {
				return nil, cobra.ShellCompDirectiveNoFileComp
			}
			var out []cobra.Completion
			for _, t := range setup.Targets() {
				if strings.HasPrefix(t.Name, toComplete) {
					out = append(out, cobra.CompletionWithDesc(t.Name, t.Short))
				}
			}
			return out, cobra.ShellCompDirectiveNoFileComp
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			t, _ := setup.Lookup(args[0])
			if buildx {
				if t.Name != "buildkit" {
					return fmt.Errorf("--buildx is for the buildkit target")
				}
				o.BuildxDir = setup.BuildxConfigDir(os.Getenv)
			}
			if o.HostsTOML && t.Name != "docker" {
				return fmt.Errorf("--hosts-toml is for the docker target (containerd, kind and k3s always use hosts.toml)")
			}
			p, err := t.Build(o)
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			if !write {
				return setup.Render(out, p)
			}
			if !t.Writable {
				return fmt.Errorf("%s is print-only: paste the printed fragments into your pipeline (run without --write)", t.Name)
			}
			acts, err := setup.Install(p)
			for _, a := range acts {
				switch {
				case !a.Changed:
					fmt.Fprintf(out, "unchanged %s\n", a.Path)
				case a.Backup != "":
					fmt.Fprintf(out, "updated   %s (previous version in %s)\n", a.Path, a.Backup)
				default:
					fmt.Fprintf(out, "created   %s\n", a.Path)
				}
			}
			if err != nil {
				return err
			}
			for _, s := range p.Snippets {
				fmt.Fprintf(out, "# ==> %s\n%s\n", s.Title, strings.TrimRight(s.Body, "\n"))
			}
			for _, n := range p.Notes {
				fmt.Fprintf(out, "# %s\n", strings.ReplaceAll(n, "\n", "\n# "))
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.Server, "server", "", "regcache address as the client reaches it: http://host:port, https://host or host:port")
	f.BoolVar(&o.Insecure, "insecure", false, "the server is plain http (when no scheme is given) or has a certificate clients cannot verify")
	f.StringVar(&o.CAFile, "ca-file", "", "PEM certificate of the CA that signed the server's TLS certificate: installed next to each engine's configuration, inlined into CI jobs")
	f.StringVar(&o.Username, "username", "", "regcache has client_auth: the login hosts and jobs use")
	f.StringVar(&o.PasswordEnv, "password-env", "", "with --username: the environment variable or CI secret holding the password (default "+setup.DefaultPasswordEnv+")")
	f.StringSliceVar(&o.Registries, "registries", []string{"docker.io"}, "registries to pull through regcache")
	f.BoolVar(&o.HostsTOML, "hosts-toml", false, "docker: Docker Engine 29+ with the containerd image store: /etc/docker/certs.d/<registry>/hosts.toml instead of daemon.json")
	f.BoolVar(&buildx, "buildx", false, "buildkit: install as buildx's default configuration ($BUILDX_CONFIG, $DOCKER_CONFIG/buildx or ~/.docker/buildx)/buildkitd.default.toml")
	f.BoolVar(&write, "write", false, "install the files instead of printing them")
	f.StringVar(&o.Root, "root", "/", "prefix for the standard install paths")
	f.StringVar(&o.Path, "path", "", "install to this file (containerd, docker --hosts-toml, kind: this certs.d directory) instead of the standard path")
	return cmd
}
