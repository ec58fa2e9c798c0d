package cli

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"text/template"
	"unicode"
)

// formatJSON is the --format value that prints JSON.
const formatJSON = "json"

// tablePrefix starts a --format that renders a table with a header row.
const tablePrefix = "table"

// templateFuncs are the functions docker offers in --format templates.
var templateFuncs = template.FuncMap{
	"json": func(v any) (string, error) {
		data, err := json.Marshal(v)
		return string(data), err
	},
	"join":     strings.Join,
	"split":    strings.Split,
	"lower":    strings.ToLower,
	"upper":    strings.ToUpper,
	"title":    title,
	"pad":      func(s string, l, r int) string { return strings.Repeat(" ", l) + s + strings.Repeat(" ", r) },
	"truncate": truncate,
	"println":  fmt.Sprintln,
}

func title(s string) string {
	r := []rune(s)
	if len(r) > 0 {
		r[0] = unicode.ToUpper(r[0])
	}
	return string(r)
}

func truncate(s string, n int) string {
	if r := []rune(s); len(r) > n {
		return string(r[:n])
	}
	return s
}

// parseTemplate parses a --format Go template. Docker's `\t` and `\n` escapes work.
func parseTemplate(format string) (*template.Template, error) {
	format = strings.NewReplacer(`\t`, "\t", `\n`, "\n").Replace(format)
	t, err := template.New("format").Funcs(templateFuncs).Option("missingkey=error").Parse(format)
	if err != nil {
		return nil, fmt.Errorf("invalid --format template: %w", err)
	}
	return t, nil
}

// renderList writes rows as ls commands do. format is "" (use def), "json" (one JSON
// object per row), "table TEMPLATE" (header row from header, columns aligned) or a
// plain template executed per row.
func renderList[T any](w io.Writer, format, def string, header T, rows []T) error {
	if format == "" {
		format = def
	}
	if format == formatJSON {
		return renderJSONLines(w, rows)
	}
	body, isTable := strings.CutPrefix(format, tablePrefix)
	if !isTable {
		return renderRows(w, format, rows)
	}
	tw := tabwriter.NewWriter(w, 10, 1, 3, ' ', 0)
	if err := renderRows(tw, body, append([]T{header}, rows...)); err != nil {
		return err
	}
	return tw.Flush()
}

func renderJSONLines[T any](w io.Writer, rows []T) error {
	enc := json.NewEncoder(w)
	for _, r := range rows {
		if err := enc.Encode(r); err != nil {
			return err
		}
	}
	return nil
}

func renderRows[T any](w io.Writer, format string, rows []T) error {
	t, err := parseTemplate(strings.TrimSpace(format))
	if err != nil {
		return err
	}
	for _, r := range rows {
		if err := executeLine(w, t, r); err != nil {
			return err
		}
	}
	return nil
}

// executeLine executes t on v and writes the result as one line.
func executeLine(w io.Writer, t *template.Template, v any) error {
	var buf bytes.Buffer
	if err := t.Execute(&buf, v); err != nil {
		return fmt.Errorf("executing --format template: %w", err)
	}
	buf.WriteByte('\n')
	_, err := w.Write(buf.Bytes())
	return err
}

// renderInspect writes objects as inspect commands do: an indented JSON array by
// default (or with "json"), else the template per object. Like docker, a template
// that does not fit the typed object (e.g. {{.Id}}) is retried on its JSON form.
func renderInspect[T any](w io.Writer, format string, objs []T) error {
	if format == "" || format == formatJSON {
		data, err := json.MarshalIndent(objs, "", "    ")
		if err != nil {
			return err
		}
		_, err = fmt.Fprintf(w, "%s\n", data)
		return err
	}
	t, err := parseTemplate(format)
	if err != nil {
		return err
	}
	for _, o := range objs {
		if err := executeInspect(w, t, o); err != nil {
			return err
		}
	}
	return nil
}

func executeInspect(w io.Writer, t *template.Template, obj any) error {
	var buf bytes.Buffer
	err := executeLine(&buf, t, obj)
	if err != nil {
		raw, jerr := asJSONMap(obj)
		buf.Reset()
		if jerr != nil || executeLine(&buf, t, raw) != nil {
			return err
		}
	}
	_, err = w.Write(buf.Bytes())
	return err
}

// asJSONMap returns v's JSON form as generic maps and slices.
func asJSONMap(v any) (any, error) {
	data, err := json.Marshal(v)
	if err != nil {
		return nil, err
	}
	var out any
	err = json.Unmarshal(data, &out)
	return out, err
}

// shortID truncates an ID to docker's 12 characters unless noTrunc.
func shortID(id string, noTrunc bool) string {
	if noTrunc {
		return id
	}
	return truncate(id, 12)
}

// parseKeyValues parses repeated key=value flags (a missing "=value" means an empty
// value, as docker's --label and --opt). The result is nil when there are none.
func parseKeyValues(flag string, vals []string) (map[string]string, error) {
	if len(vals) == 0 {
		return nil, nil
	}
	m := make(map[string]string, len(vals))
	for _, v := range vals {
		k, val, _ := strings.Cut(v, "=")
		if strings.TrimSpace(k) == "" {
			return nil, fmt.Errorf("invalid --%s %q: want key=value", flag, v)
		}
		m[k] = val
	}
	return m, nil
}
