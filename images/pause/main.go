// Command pause is the pod sandbox's first process: it holds the pod's namespaces open, reaps
// the orphans the kernel hands to it (PID 1 of a pod that shares its PID namespace), and exits
// 0 on SIGTERM or SIGINT so the runtime can stop the sandbox without a SIGKILL.
//
// Built with CGO_ENABLED=0: a static binary, the only file of its image.
package main

import (
	"fmt"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	if len(os.Args) > 1 && os.Args[1] == "-v" {
		fmt.Println("pause (edgefleet)")
		return
	}
	if os.Getpid() != 1 {
		// Outside a sandbox, become the reaper of our own subtree so orphans are still collected.
		if err := prctlSubreaper(); err != nil {
			fmt.Fprintln(os.Stderr, "pause: not PID 1 and cannot become a subreaper:", err)
		}
	}
	signals := make(chan os.Signal, 16)
	signal.Notify(signals, syscall.SIGTERM, syscall.SIGINT, syscall.SIGCHLD)
	for sig := range signals {
		if sig == syscall.SIGCHLD {
			reap()
			continue
		}
		fmt.Fprintln(os.Stderr, "pause: shutting down, got signal", sig)
		os.Exit(0)
	}
}

// reap collects every exited child: one SIGCHLD may stand for several exits.
func reap() {
	for {
		var status syscall.WaitStatus
		pid, err := syscall.Wait4(-1, &status, syscall.WNOHANG, nil)
		if pid <= 0 || err != nil {
			return
		}
	}
}

func prctlSubreaper() error {
	const prSetChildSubreaper = 36
	if _, _, errno := syscall.RawSyscall(syscall.SYS_PRCTL, prSetChildSubreaper, 1, 0); errno != 0 {
		return errno
	}
	return nil
}
