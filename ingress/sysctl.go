package ingress

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// readProcSys reads /proc/sys/<key> on the calling thread (inside netns.Do).
func readProcSys(key string) (string, error) {
	b, err := os.ReadFile(filepath.Join("/proc/sys", key))
	if err != nil {
		return "", fmt.Errorf("reading sysctl %s: %w", key, err)
	}
	return strings.TrimSpace(string(b)), nil
}
