// edgefleet-fakecri: the lab's stand-in for a container runtime.
//
// Lab hosts are network namespaces without containerd or cgroup delegation, so a K3s agent
// there points its kubelet at this CRI endpoint (--container-runtime-endpoint). It is
// Kubernetes' own in-memory fake runtime (k8s.io/cri-client/pkg/fake): sandboxes and
// containers are bookkeeping only, nothing is executed. The kubelet, the join, node
// registration, drain and node deletion are all real.
package main

import (
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"k8s.io/cri-client/pkg/fake"
)

func main() {
	listen := flag.String("listen", "unix:///run/edgefleet-fakecri.sock", "CRI endpoint to serve")
	flag.Parse()
	rt := fake.NewFakeRemoteRuntime()
	if err := rt.Start(*listen); err != nil {
		fmt.Fprintf(os.Stderr, "edgefleet-fakecri: %v\n", err)
		os.Exit(1)
	}
	fmt.Printf("edgefleet-fakecri: serving CRI on %s\n", *listen)
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGINT, syscall.SIGTERM)
	<-stop
	rt.Stop()
}
