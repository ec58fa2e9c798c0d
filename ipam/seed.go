package ipam

import "os"

// MachineSeed is the seed of the default IPv6 ULA prefix (Config.V6Seed): the
// contents of /etc/machine-id, else fallback (e.g. the data root).
func MachineSeed(fallback string) string {
	if b, err := os.ReadFile("/etc/machine-id"); err == nil && len(b) > 0 {
		return string(b)
	}
	return fallback
}
