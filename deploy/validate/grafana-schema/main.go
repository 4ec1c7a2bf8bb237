// grafana-schema decodes Grafana dashboard JSON strictly with Grafana's own generated types
// (github.com/grafana/grafana-foundation-sdk/go), since no Grafana server runs here.
//
//	grafana-schema -sdk DIR dashboard.json...
//
// DIR is the SDK module's source (go mod download -json gives it): the enum values are read
// from its generated constants. One PASS or FAIL line per dashboard; exit 1 on any FAIL.
//
// What "strict" covers, per dashboard:
//   - the SDK's UnmarshalJSONStrict: unknown fields, wrong JSON types and missing required
//     fields fail, for the dashboard, its panels and rows, variables, annotations and links;
//     each panel's options and fieldConfig.defaults.custom with the schema of its panel type
//     (timeseries, stat, table, candlestick, ...), each Prometheus target with its query schema;
//   - the SDK decodes fieldConfig itself loosely (only `custom` strictly): it is decoded again
//     here as a strict FieldConfigSource (defaults, overrides, thresholds, colors);
//   - a panel type or a target datasource type the SDK has no schema for would be decoded
//     loosely: that fails, except the Cassandra datasource, checked against its plugin's own
//     query model (cassandra.go);
//   - enum values (drawStyle, legend displayMode, candlestick mode, ...) are checked against
//     the SDK's constants (enums.go): Go's json accepts any string for them;
//   - the SDK's Validate() constraints (grid sizes, string lengths, ...).
//
// Not covered, because the SDK's schemas leave them open: transformation options, override
// property values, and a query variable's query object.
package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"runtime/debug"
	"strings"

	"github.com/grafana/grafana-foundation-sdk/go/cog"
	"github.com/grafana/grafana-foundation-sdk/go/cog/plugins"
	"github.com/grafana/grafana-foundation-sdk/go/cog/variants"
	"github.com/grafana/grafana-foundation-sdk/go/dashboard"
)

// sdkVersion names the SDK version go.mod pins, as built in, for the PASS and FAIL lines.
func sdkVersion() string {
	if info, ok := debug.ReadBuildInfo(); ok {
		for _, dep := range info.Deps {
			if dep.Path == sdkModule {
				return "grafana-foundation-sdk/go " + dep.Version
			}
		}
	}
	return "grafana-foundation-sdk/go"
}

func main() {
	sdkDir := flag.String("sdk", "", "source directory of github.com/grafana/grafana-foundation-sdk/go")
	flag.Parse()
	if *sdkDir == "" || flag.NArg() == 0 {
		fmt.Fprintln(os.Stderr, "usage: grafana-schema -sdk DIR dashboard.json...")
		os.Exit(2)
	}
	enums, err := loadEnums(*sdkDir)
	if err != nil {
		fmt.Printf("FAIL grafana/schema: reading the SDK's enums from %s: %v\n", *sdkDir, err)
		os.Exit(1)
	}
	plugins.RegisterDefaultPlugins()
	cog.NewRuntime().RegisterDataqueryVariant(cassandraVariant())

	failed := false
	for _, path := range flag.Args() {
		name := "grafana/schema/" + filepath.Base(path)
		panels, problems := check(path, enums)
		if len(problems) > 0 {
			failed = true
			fmt.Printf("FAIL %s: %d problem(s) decoding strictly with %s\n", name, len(problems), sdkVersion())
			for _, problem := range problems {
				fmt.Printf("    %s\n", problem)
			}
			continue
		}
		fmt.Printf("PASS %s: decoded strictly with %s (%s)\n", name, sdkVersion(), panels)
	}
	if failed {
		os.Exit(1)
	}
}

// check decodes one dashboard and returns a summary of its panel types, or the problems found.
func check(path string, enums enumTable) (string, []string) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return "", []string{err.Error()}
	}
	var problems []string
	var board dashboard.Dashboard
	problems = append(problems, lines(board.UnmarshalJSONStrict(raw))...)

	// The SDK's panel decoder reads fieldConfig loosely; decode it again, strictly.
	var shape struct {
		Panels []struct {
			Type        string          `json:"type"`
			Title       string          `json:"title"`
			FieldConfig json.RawMessage `json:"fieldConfig"`
			Panels      []struct {
				Type        string          `json:"type"`
				Title       string          `json:"title"`
				FieldConfig json.RawMessage `json:"fieldConfig"`
			} `json:"panels"`
		} `json:"panels"`
	}
	if err := json.Unmarshal(raw, &shape); err != nil {
		return "", append(problems, err.Error())
	}
	strictFieldConfig := func(where string, fc json.RawMessage) {
		if fc == nil {
			return
		}
		var source dashboard.FieldConfigSource
		for _, line := range lines(source.UnmarshalJSONStrict(fc)) {
			problems = append(problems, where+".fieldConfig."+line)
		}
	}
	for i, p := range shape.Panels {
		strictFieldConfig(fmt.Sprintf("panels[%d] '%s'", i, p.Title), p.FieldConfig)
		for j, inner := range p.Panels {
			strictFieldConfig(fmt.Sprintf("panels[%d].panels[%d] '%s'", i, j, inner.Title), inner.FieldConfig)
		}
	}

	// The strict decoders return their (empty) error list as a non-nil error, so the SDK drops
	// what they decoded (panels, options, targets). A loose decode gives the typed values back,
	// with the same variants, for what the strict pass cannot see: panel and query types without
	// a schema, and enum values.
	var typed dashboard.Dashboard
	if err := json.Unmarshal(raw, &typed); err != nil {
		if len(problems) == 0 { // else the strict pass has said why
			problems = append(problems, "loose decode: "+err.Error())
		}
		return "", problems
	}
	problems = append(problems, lines(typed.Validate())...)
	counts := map[string]int{}
	var order []string
	visit := func(where string, panel *dashboard.Panel) {
		if counts[panel.Type] == 0 {
			order = append(order, panel.Type)
		}
		counts[panel.Type]++
		if _, found := cog.ConfigForPanelcfgVariant(panel.Type); !found {
			problems = append(problems, fmt.Sprintf("%s: panel type %q has no schema in the SDK: its options would go unchecked", where, panel.Type))
		}
		for i, target := range panel.Targets {
			if _, unknown := target.(variants.UnknownDataquery); unknown {
				problems = append(problems, fmt.Sprintf("%s.targets[%d]: no query schema for its datasource type: give the target a datasource with a known type", where, i))
			}
		}
	}
	rows := 0
	for i, item := range typed.Panels {
		switch {
		case item.Panel != nil:
			visit(fmt.Sprintf("panels[%d]", i), item.Panel)
		case item.RowPanel != nil:
			rows++
			for j := range item.RowPanel.Panels {
				visit(fmt.Sprintf("panels[%d].panels[%d]", i, j), &item.RowPanel.Panels[j])
			}
		}
	}
	problems = append(problems, enums.check(typed)...)

	summary := make([]string, 0, len(order))
	for _, kind := range order {
		summary = append(summary, fmt.Sprintf("%d %s", counts[kind], kind))
	}
	return fmt.Sprintf("%s panels, %d rows", strings.Join(summary, ", "), rows), problems
}

// lines gives one problem per line of the SDK's BuildErrors. Its strict decoders return their
// error list even when empty (a non-nil error holding no errors): that is no problem.
func lines(err error) []string {
	var build cog.BuildErrors
	if err == nil || errors.As(err, &build) && len(build) == 0 {
		return nil
	}
	return strings.Split(strings.TrimSpace(err.Error()), "\n")
}
