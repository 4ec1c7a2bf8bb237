package main

// The SDK types enums as named strings and ints (common.GraphDrawStyle, dashboard.VariableHide)
// with their values as generated constants, but Go's json accepts any string or number for them,
// and Validate() does not look. So the values are read here from the SDK's own source, and every
// decoded value of such a type is checked against them.

import (
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"io/fs"
	"path/filepath"
	"reflect"
	"sort"
	"strconv"
	"strings"
)

const sdkModule = "github.com/grafana/grafana-foundation-sdk/go"

// enumTable maps "import/path.TypeName" to the values its constants allow.
type enumTable map[string]map[string]bool

func loadEnums(sdkDir string) (enumTable, error) {
	table := enumTable{}
	fset := token.NewFileSet()
	err := filepath.WalkDir(sdkDir, func(path string, entry fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if entry.IsDir() || !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
			return nil
		}
		rel, err := filepath.Rel(sdkDir, filepath.Dir(path))
		if err != nil {
			return err
		}
		importPath := sdkModule
		if rel != "." {
			importPath += "/" + filepath.ToSlash(rel)
		}
		file, err := parser.ParseFile(fset, path, nil, parser.SkipObjectResolution)
		if err != nil {
			return err
		}
		for _, decl := range file.Decls {
			gen, ok := decl.(*ast.GenDecl)
			if !ok || gen.Tok != token.CONST {
				continue
			}
			for _, spec := range gen.Specs {
				value := spec.(*ast.ValueSpec)
				kind, ok := value.Type.(*ast.Ident)
				if !ok {
					continue
				}
				for _, expr := range value.Values {
					lit, ok := expr.(*ast.BasicLit)
					if !ok {
						continue
					}
					text := lit.Value
					if lit.Kind == token.STRING {
						if text, err = strconv.Unquote(text); err != nil {
							return err
						}
					}
					key := importPath + "." + kind.Name
					if table[key] == nil {
						table[key] = map[string]bool{}
					}
					table[key][text] = true
				}
			}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	if len(table) == 0 {
		return nil, fmt.Errorf("no enum constants found: is this the SDK's source?")
	}
	return table, nil
}

// check walks a decoded value and returns every enum value its type's constants do not allow.
func (table enumTable) check(root any) []string {
	var problems []string
	var walk func(value reflect.Value, path string, optional bool)
	walk = func(value reflect.Value, path string, optional bool) {
		switch value.Kind() {
		case reflect.Interface, reflect.Pointer:
			if !value.IsNil() {
				walk(value.Elem(), path, optional)
			}
		case reflect.Struct:
			kind := value.Type()
			for i := 0; i < kind.NumField(); i++ {
				field := kind.Field(i)
				if !field.IsExported() {
					continue
				}
				name, options, _ := strings.Cut(field.Tag.Get("json"), ",")
				if name == "" || name == "-" {
					name = field.Name
				}
				next := path + "." + name
				// cog's unions (PanelOrRowPanel, StringOrMap) hold one pointer per variant:
				// the variant's name is not part of the JSON path.
				if strings.Contains(kind.Name(), "Or") && field.Type.Kind() == reflect.Pointer {
					next = path
				}
				walk(value.Field(i), next, strings.Contains(options, "omitempty"))
			}
		case reflect.Slice, reflect.Array:
			for i := 0; i < value.Len(); i++ {
				walk(value.Index(i), fmt.Sprintf("%s[%d]", path, i), false)
			}
		case reflect.Map:
			keys := value.MapKeys()
			sort.Slice(keys, func(a, b int) bool { return fmt.Sprint(keys[a]) < fmt.Sprint(keys[b]) })
			for _, key := range keys {
				walk(value.MapIndex(key), fmt.Sprintf("%s.%v", path, key), false)
			}
		case reflect.String, reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
			reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
			kind := value.Type()
			allowed := table[kind.PkgPath()+"."+kind.Name()]
			if allowed == nil || !value.CanInterface() {
				return
			}
			var text string
			switch {
			case value.Kind() == reflect.String:
				text = value.String()
			case value.CanInt():
				text = strconv.FormatInt(value.Int(), 10)
			default:
				text = strconv.FormatUint(value.Uint(), 10)
			}
			if optional && value.IsZero() {
				return
			}
			if !allowed[text] {
				values := make([]string, 0, len(allowed))
				for v := range allowed {
					values = append(values, strconv.Quote(v))
				}
				sort.Strings(values)
				problems = append(problems, fmt.Sprintf("%s: %q is not a %s (%s)",
					strings.TrimPrefix(path, "."), text, kind.Name(), strings.Join(values, ", ")))
			}
		}
	}
	walk(reflect.ValueOf(root), "", false)
	return problems
}
