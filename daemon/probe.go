package daemon

import (
	"bytes"
	"compress/gzip"
	"io"
	"os"
)

// kernelCapabilities reports the kernel features the cluster features depend on, as
// `pier node ls` shows them: each is "yes" (built in or a module) or "no", read from
// /proc/config.gz (or a loaded module when the config is not exposed).
func kernelCapabilities() map[string]string {
	cfg := kernelConfig()
	caps := map[string]string{}
	for name, sym := range map[string]string{"vxlan": "CONFIG_VXLAN", "wireguard": "CONFIG_WIREGUARD", "ipvs": "CONFIG_IP_VS"} {
		caps[name] = "no"
		if bytes.Contains(cfg, []byte(sym+"=y")) || bytes.Contains(cfg, []byte(sym+"=m")) {
			caps[name] = "yes"
		} else if _, err := os.Stat("/sys/module/" + map[string]string{"vxlan": "vxlan", "wireguard": "wireguard", "ipvs": "ip_vs"}[name]); err == nil {
			caps[name] = "yes"
		}
	}
	return caps
}

func kernelConfig() []byte {
	f, err := os.Open("/proc/config.gz")
	if err != nil {
		return nil
	}
	defer f.Close()
	z, err := gzip.NewReader(f)
	if err != nil {
		return nil
	}
	b, _ := io.ReadAll(z)
	return b
}
