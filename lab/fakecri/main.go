// edgefleet-fakecri: the lab's stand-in for a container runtime.
//
// Lab hosts are network namespaces without containerd, so a K3s agent there points its
// kubelet at this CRI endpoint (--container-runtime-endpoint). It is Kubernetes' own
// in-memory fake runtime (k8s.io/cri-client/pkg/fake): sandboxes and containers are
// bookkeeping only, nothing is executed. The kubelet, the join, node registration, drain and
// node deletion are all real.
//
// Two gaps of the fake are filled here, both needed by a real kubelet:
//   - pulled images get a size (the kubelet refuses images without one);
//   - every container gets a log file of its own under -log-dir. The fake reports an empty
//     log path, and the kubelet's log cleanup removes "<log path>*" relative to its working
//     directory: with an empty path that is every entry of "/".
package main

import (
	"context"
	"flag"
	"fmt"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"

	"google.golang.org/grpc"
	kubeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
	"k8s.io/cri-client/pkg/fake"
)

type runtime struct {
	*fake.RemoteRuntime
	logDir string
}

// newRuntime is the fake, ready (runtime and network conditions true), with image sizes.
func newRuntime(logDir string) *runtime {
	rt := &runtime{RemoteRuntime: fake.NewFakeRemoteRuntime(), logDir: logDir}
	rt.ImageService.SetFakeImageSize(1 << 20)
	rt.RuntimeService.FakeStatus = &kubeapi.RuntimeStatus{Conditions: []*kubeapi.RuntimeCondition{
		{Type: kubeapi.RuntimeReady, Status: true},
		{Type: kubeapi.NetworkReady, Status: true},
	}}
	return rt
}

// logPath is the container's own log file; IDs never leave logDir.
func (r *runtime) logPath(id string) string {
	return filepath.Join(r.logDir, filepath.Base("/"+id)+".log")
}

func (r *runtime) CreateContainer(ctx context.Context, req *kubeapi.CreateContainerRequest) (*kubeapi.CreateContainerResponse, error) {
	resp, err := r.RemoteRuntime.CreateContainer(ctx, req)
	if err != nil {
		return resp, err
	}
	if err := os.WriteFile(r.logPath(resp.ContainerId), nil, 0o640); err != nil {
		return nil, fmt.Errorf("container log: %w", err)
	}
	return resp, nil
}

func (r *runtime) ContainerStatus(ctx context.Context, req *kubeapi.ContainerStatusRequest) (*kubeapi.ContainerStatusResponse, error) {
	resp, err := r.RemoteRuntime.ContainerStatus(ctx, req)
	if err == nil && resp.GetStatus() != nil && resp.Status.LogPath == "" {
		resp.Status.LogPath = r.logPath(resp.Status.Id)
	}
	return resp, err
}

func (r *runtime) RemoveContainer(ctx context.Context, req *kubeapi.RemoveContainerRequest) (*kubeapi.RemoveContainerResponse, error) {
	resp, err := r.RemoteRuntime.RemoveContainer(ctx, req)
	if err == nil {
		_ = os.Remove(r.logPath(req.ContainerId))
	}
	return resp, err
}

func main() {
	listen := flag.String("listen", "unix:///run/edgefleet-fakecri.sock", "CRI endpoint to serve (unix://PATH)")
	logDir := flag.String("log-dir", "/var/log/edgefleet-fakecri", "where container log files are kept")
	flag.Parse()
	socket, ok := strings.CutPrefix(*listen, "unix://")
	if !ok || !filepath.IsAbs(socket) {
		fmt.Fprintf(os.Stderr, "edgefleet-fakecri: -listen must be unix:///absolute/path, got %q\n", *listen)
		os.Exit(2)
	}
	if !filepath.IsAbs(*logDir) {
		fmt.Fprintf(os.Stderr, "edgefleet-fakecri: -log-dir must be absolute, got %q\n", *logDir)
		os.Exit(2)
	}
	if err := os.MkdirAll(*logDir, 0o750); err != nil {
		fmt.Fprintf(os.Stderr, "edgefleet-fakecri: %v\n", err)
		os.Exit(1)
	}
	rt := newRuntime(*logDir)
	_ = os.Remove(socket)
	l, err := net.Listen("unix", socket)
	if err != nil {
		fmt.Fprintf(os.Stderr, "edgefleet-fakecri: %v\n", err)
		os.Exit(1)
	}
	server := grpc.NewServer()
	kubeapi.RegisterRuntimeServiceServer(server, rt)
	kubeapi.RegisterImageServiceServer(server, rt.RemoteRuntime)
	go func() {
		if err := server.Serve(l); err != nil {
			fmt.Fprintf(os.Stderr, "edgefleet-fakecri: %v\n", err)
			os.Exit(1)
		}
	}()
	fmt.Printf("edgefleet-fakecri: serving CRI on %s, container logs in %s\n", *listen, *logDir)
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGINT, syscall.SIGTERM)
	<-stop
	server.Stop()
}
