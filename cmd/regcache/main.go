// Command regcache is a pull-through caching container registry.
package main

import (
	"fmt"
	"os"

	"github.com/spf13/cobra"

	"github.com/regcache/regcache/internal/buildinfo"
)

func main() {
	if err := newRootCmd().Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "regcache:", err)
		os.Exit(1)
	}
}

func newRootCmd() *cobra.Command {
	root := &cobra.Command{
		Use:           "regcache",
		Short:         "A pull-through caching container registry that keeps CI pulls working under Docker Hub rate limits",
		SilenceUsage:  true,
		SilenceErrors: true,
		Version:       buildinfo.Read().Version,
	}
	// --version prints the same line as the version command.
	root.SetVersionTemplate(buildinfo.Read().String() + "\n")
	root.AddCommand(newServeCmd(), newRatelimitCmd(), newStatusCmd(), newWarmCmd(), newVersionCmd())
	root.AddCommand(toolCommands()...)
	return root
}
