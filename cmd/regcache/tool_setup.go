package main

import (
	"fmt"
	"strings"

	"github.com/regcache/regcache/internal/setup"
	"github.com/spf13/cobra"
)

func newSetupCmd() *cobra.Command {
	var (
		o     setup.Options
		write bool
	)
	var lines []string
	for _, t := range setup.Targets() {
		mode := "print"
		if t.Writable {
			mode = "print or --write"
		}
		lines = append(lines, fmt.Sprintf("  %-15s %s (%s)", t.Name, t.Short, mode))
	}
	cmd := &cobra.Command{
		Use:   "setup <target> --server URL",
		Short: "Print or install the client configuration that sends pulls through regcache",
		Long: `setup prints the configuration a client needs to pull through regcache, or
installs it with --write. Targets:

` + strings.Join(lines, "\n") + `

--write merges into the existing file (other keys and comments stay), keeps
the previous version as <file>.bak, and changes nothing when the file is
already right, so running it twice gives byte-identical files.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			t, ok := setup.Lookup(args[0])
			if !ok {
				return fmt.Errorf("unknown target %q; see regcache setup --help", args[0])
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
			for _, n := range p.Notes {
				fmt.Fprintf(out, "# %s\n", n)
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.Server, "server", "", "regcache address: http://host:port, https://host or host:port")
	f.BoolVar(&o.Insecure, "insecure", false, "the server is plain http (when no scheme is given) or has a certificate clients cannot verify")
	f.StringVar(&o.CAFile, "ca-file", "", "PEM certificate of the CA that signed the server's TLS certificate: trusted by containerd, BuildKit and k3s by path, and installed under certs.d for docker and podman")
	f.StringSliceVar(&o.Registries, "registries", []string{"docker.io"}, "registries to pull through regcache")
	f.BoolVar(&write, "write", false, "install the files instead of printing them")
	f.StringVar(&o.Root, "root", "/", "prefix for the standard install paths")
	f.StringVar(&o.Path, "path", "", "install to this file (containerd, kind: this certs.d directory) instead of the standard path")
	return cmd
}
