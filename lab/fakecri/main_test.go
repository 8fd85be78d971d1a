package main

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	kubeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// The kubelet removes "<log path>*" when it cleans a container up: the path must be the
// container's own file, never empty and never outside the log directory.
func TestEveryContainerHasItsOwnLogFile(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	rt := newRuntime(dir)
	sandbox, err := rt.RunPodSandbox(ctx, &kubeapi.RunPodSandboxRequest{Config: &kubeapi.PodSandboxConfig{
		Metadata: &kubeapi.PodSandboxMetadata{Name: "p", Namespace: "ns", Uid: "u"}, LogDirectory: "/var/log/pods/x"}})
	if err != nil {
		t.Fatal(err)
	}
	created, err := rt.CreateContainer(ctx, &kubeapi.CreateContainerRequest{PodSandboxId: sandbox.PodSandboxId,
		Config: &kubeapi.ContainerConfig{Metadata: &kubeapi.ContainerMetadata{Name: "app"}, LogPath: "app/0.log",
			Image: &kubeapi.ImageSpec{Image: "img"}}})
	if err != nil {
		t.Fatal(err)
	}
	status, err := rt.ContainerStatus(ctx, &kubeapi.ContainerStatusRequest{ContainerId: created.ContainerId})
	if err != nil {
		t.Fatal(err)
	}
	path := status.Status.LogPath
	if !filepath.IsAbs(path) || filepath.Dir(path) != dir || !strings.HasSuffix(path, ".log") {
		t.Fatalf("log path %q is not a file of its own in %s", path, dir)
	}
	if _, err := os.Stat(path); err != nil {
		t.Fatalf("log file not created: %v", err)
	}
	if _, err := rt.RemoveContainer(ctx, &kubeapi.RemoveContainerRequest{ContainerId: created.ContainerId}); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(path); !os.IsNotExist(err) {
		t.Fatalf("log file left behind: %v", err)
	}
}

func TestLogPathsStayInsideTheLogDirectory(t *testing.T) {
	rt := &runtime{logDir: "/var/log/x"}
	for _, id := range []string{"../../etc/passwd", "/bin", "", "a/b"} {
		if got := rt.logPath(id); filepath.Dir(got) != "/var/log/x" {
			t.Errorf("logPath(%q) = %q escapes the log directory", id, got)
		}
	}
}

func TestRuntimeIsReadyAndPulledImagesHaveASize(t *testing.T) {
	rt := newRuntime(t.TempDir())
	ctx := context.Background()
	st0, err := rt.Status(ctx, &kubeapi.StatusRequest{})
	if err != nil || len(st0.Status.Conditions) != 2 || !st0.Status.Conditions[0].Status || !st0.Status.Conditions[1].Status {
		t.Fatalf("runtime status %v, %v", st0, err)
	}
	if _, err := rt.PullImage(ctx, &kubeapi.PullImageRequest{Image: &kubeapi.ImageSpec{Image: "r/i@sha256:00"}}); err != nil {
		t.Fatal(err)
	}
	st, err := rt.ImageStatus(ctx, &kubeapi.ImageStatusRequest{Image: &kubeapi.ImageSpec{Image: "r/i@sha256:00"}})
	if err != nil || st.Image == nil || st.Image.Size == 0 {
		t.Fatalf("image status %v, %v", st, err)
	}
}
