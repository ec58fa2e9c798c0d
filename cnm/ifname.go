package cnm

import (
	"fmt"
	"strconv"
	"strings"
)

// nextIfName returns <prefix><N> with the lowest N unused in the sandbox, prefix
// being the network's (its driver decoded it from the options), else "eth".
func (c *Controller) nextIfName(sid string, n *Network) string {
	prefix := n.IfacePrefix
	if prefix == "" {
		prefix = "eth"
	}
	return c.nextIfNameWithPrefix(sid, prefix)
}

// nextIfNameWithPrefix returns <prefix><N> with the lowest N unused in the sandbox.
func (c *Controller) nextIfNameWithPrefix(sid, prefix string) string {
	used := map[int]bool{}
	for _, ep := range c.sandboxEndpoints(sid) {
		used[ifIndex(ep.IfName)] = ep.IfName != ""
	}
	i := 0
	for used[i] {
		i++
	}
	return fmt.Sprintf("%s%d", prefix, i)
}

func ifIndex(name string) int {
	i := strings.LastIndexFunc(name, func(r rune) bool { return r < '0' || r > '9' })
	n, _ := strconv.Atoi(name[i+1:])
	return n
}
