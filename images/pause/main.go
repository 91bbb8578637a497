// pause is the sandbox ("infra") container of every pod on the test node.
//
// Kubernetes' own pause image cannot be pulled here (no registry), so the node
// builds this one from source. It does what kubernetes/build/pause/linux/pause.c
// does: it holds the pod's namespaces open by staying alive, exits promptly on
// SIGINT or SIGTERM so that pod teardown is not held up, and, being PID 1 when
// the pod shares its PID namespace, reaps orphaned children so no zombies pile up.
package main

import (
	"fmt"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	if os.Getpid() != 1 {
		fmt.Fprintln(os.Stderr, "Warning: pause should be the first process")
	}
	signals := make(chan os.Signal, 8)
	signal.Notify(signals, syscall.SIGINT, syscall.SIGTERM, syscall.SIGCHLD)
	for sig := range signals {
		switch sig {
		case syscall.SIGCHLD:
			reapChildren()
		default:
			fmt.Fprintf(os.Stderr, "Shutting down, got signal: %v\n", sig)
			os.Exit(0)
		}
	}
}

// reapChildren collects every exited child without blocking; one SIGCHLD may
// stand for several exits.
func reapChildren() {
	for {
		var status syscall.WaitStatus
		pid, err := syscall.Wait4(-1, &status, syscall.WNOHANG, nil)
		if pid <= 0 || err != nil {
			return
		}
	}
}
