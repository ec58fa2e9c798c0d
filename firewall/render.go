package firewall

import (
	"fmt"
	"strings"
)

// Render returns the full desired ruleset for s in the syntax of
// `nft list table inet pier`, except that set elements are listed one per
// line, sorted. It is deterministic and needs no privileges. Bridges are
// normalized as SetBridge does; ones it would reject are rendered as given.
func Render(s State) string {
	bridges := make(map[string]Bridge, len(s.Bridges))
	for _, b := range s.Bridges {
		if nb, err := normalize(b); err == nil {
			b = nb
		}
		bridges[b.Name] = b
	}
	ports := map[string][]PortBinding{}
	for owner, bs := range s.Ports {
		if nb, err := normalizePorts(owner, bs); err == nil {
			bs = nb
		}
		ports[owner] = bs
	}
	return render(desired(bridges, ports))
}

func render(c contents) string {
	var blocks []string
	for _, d := range allSets {
		blocks = append(blocks, renderSet(d, c[d.name]))
	}
	for _, cd := range chains() {
		blocks = append(blocks, renderChain(cd))
	}
	return fmt.Sprintf("table inet %s {\n%s}\n", tableName, strings.Join(blocks, "\n"))
}

func renderSet(d setDef, elems map[string]element) string {
	var b strings.Builder
	if dt, ok := d.kind.dataType(); ok {
		fmt.Fprintf(&b, "\tmap %s {\n\t\ttype %s : %s\n", d.name, d.kind.keyType().Name, dt.Name)
	} else {
		fmt.Fprintf(&b, "\tset %s {\n\t\ttype %s\n", d.name, d.kind.keyType().Name)
	}
	if d.kind.interval() {
		b.WriteString("\t\tflags interval\n")
	}
	if len(elems) > 0 {
		b.WriteString("\t\telements = {\n")
		for _, e := range sortedElements(elems) {
			fmt.Fprintf(&b, "\t\t\t%s,\n", e.text())
		}
		b.WriteString("\t\t}\n")
	}
	b.WriteString("\t}\n")
	return b.String()
}

func renderChain(cd chainDef) string {
	var b strings.Builder
	fmt.Fprintf(&b, "\tchain %s {\n", cd.name)
	if cd.typ != "" {
		fmt.Fprintf(&b, "\t\ttype %s hook %s priority %s; policy accept;\n", cd.typ, cd.hookText, cd.prioText)
	}
	for _, r := range cd.rules {
		fmt.Fprintf(&b, "\t\t%s\n", r.text)
	}
	b.WriteString("\t}\n")
	return b.String()
}
