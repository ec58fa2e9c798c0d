package firewall

import (
	"github.com/google/nftables"
)

// conn is the seam around the netlink connection: the subset of
// *nftables.Conn the package uses. Table, chain, rule, set and element calls
// only queue messages; Flush sends them as one atomic batch (and sends
// nothing if nothing is queued).
type conn interface {
	AddTable(t *nftables.Table) *nftables.Table
	DelTable(t *nftables.Table)
	AddChain(c *nftables.Chain) *nftables.Chain
	AddRule(r *nftables.Rule) *nftables.Rule
	AddSet(s *nftables.Set, vals []nftables.SetElement) error
	SetAddElements(s *nftables.Set, vals []nftables.SetElement) error
	SetDeleteElements(s *nftables.Set, vals []nftables.SetElement) error
	Flush() error
	ListTablesOfFamily(family nftables.TableFamily) ([]*nftables.Table, error)
	CloseLasting() error
}

var _ conn = (*nftables.Conn)(nil)
