// Command regcache is a pull-through caching container registry.
package main

import (
	"fmt"
	"os"

	"github.com/spf13/cobra"
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
	}
	root.AddCommand(newServeCmd(), newRatelimitCmd(), newStatusCmd(), newWarmCmd())
	root.AddCommand(toolCommands()...)
	return root
}
