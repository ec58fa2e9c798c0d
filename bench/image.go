package bench

import (
	"archive/tar"
	"bytes"
	"fmt"
	"os"
	"time"
)

// busyboxApplets are linked in the image: enough for `sleep 3600` and a look inside.
var busyboxApplets = []string{"sh", "sleep", "cat", "ls", "ip", "nslookup", "wget", "nc"}

// busyboxImage returns a root filesystem tar with the static busybox at /bin/busybox
// and its applets as symlinks: what `docker import` turns into the benchmark's
// image, since no registry is reachable.
func busyboxImage(busybox string) ([]byte, error) {
	bin, err := os.ReadFile(busybox)
	if err != nil {
		return nil, fmt.Errorf("reading busybox (install busybox-static): %w", err)
	}
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	mtime := time.Unix(0, 0)
	for _, dir := range []string{"bin/", "etc/", "tmp/", "proc/", "sys/", "dev/"} {
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: dir, Mode: 0o755, ModTime: mtime}); err != nil {
			return nil, err
		}
	}
	if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: "bin/busybox", Mode: 0o755, Size: int64(len(bin)), ModTime: mtime}); err != nil {
		return nil, err
	}
	if _, err := tw.Write(bin); err != nil {
		return nil, err
	}
	for _, a := range busyboxApplets {
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeSymlink, Name: "bin/" + a, Linkname: "busybox", Mode: 0o777, ModTime: mtime}); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}
