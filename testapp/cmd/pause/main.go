// Command pause is the process of a pod sandbox: it holds the pod's namespaces open, does
// nothing, and exits 0 on SIGTERM or SIGINT. As PID 1 of its container a signal it does not
// handle would be ignored, so it handles both.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	signals := make(chan os.Signal, 1)
	signal.Notify(signals, syscall.SIGTERM, syscall.SIGINT)
	<-signals
	os.Exit(0)
}
