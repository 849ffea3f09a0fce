// The pod sandbox ("pause") process for the smoke test's cluster, which can pull no image:
// it holds the pod's namespaces and waits for a stop signal. Built by scripts/k8s-images.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGINT, syscall.SIGTERM)
	<-stop
}
