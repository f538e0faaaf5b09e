// Command argocd-lua runs Argo CD resource health scripts the way Argo CD does, so tests catch scripts
// that only work with the full Lua standard library.
//
// It mirrors runLua / ExecuteHealthLua in Argo CD's util/lua/lua.go: gopher-lua (the VM Argo CD embeds),
// lua.Options{SkipOpenLibs: true} (argocd-cm scripts run without `useOpenLibs`), then only the package,
// base and table libraries plus Argo CD's reduced "safe" os library (time and date, reachable through
// `require("os")`). There is no `string` library, so no string methods either. The object is the global
// `obj`; a 1 s deadline bounds each run. A script error, or a returned value that is not a table, is
// what Argo CD reports as health Unknown with the error as message; a status outside Argo CD's health
// codes is Unknown too.
//
// Input (stdin): a JSON array of cases, each {"script": "<lua source>"} or {"file": "<path>"}, plus
// "obj" (the Kubernetes object) and optionally "openLibs": true (Argo CD's resource.customizations
// useOpenLibs, and what its built-in scripts get). Output (stdout): a JSON array with one
// {"status", "message"} per case, plus "error" when the script failed.
//
// Used by tests/unit/test_argocd_health.py through hack/argocd-lua/build.sh.
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"time"

	lua "github.com/yuin/gopher-lua"
)

type testCase struct {
	Script   *string         `json:"script"`
	File     string          `json:"file"`
	Obj      json.RawMessage `json:"obj"`
	OpenLibs bool            `json:"openLibs"`
}

type result struct {
	Status  string `json:"status"`
	Message string `json:"message"`
	Error   string `json:"error,omitempty"`
}

// The health codes Argo CD accepts from a script (isValidHealthStatusCode).
var healthCodes = map[string]bool{
	"Unknown": true, "Progressing": true, "Suspended": true, "Healthy": true, "Degraded": true, "Missing": true,
}

func main() {
	in, err := io.ReadAll(os.Stdin)
	if err != nil {
		fail(err)
	}
	var cases []testCase
	if err := json.Unmarshal(in, &cases); err != nil {
		fail(fmt.Errorf("stdin: %w", err))
	}
	out := make([]result, 0, len(cases))
	for i, c := range cases {
		src := ""
		switch {
		case c.Script != nil:
			src = *c.Script
		case c.File != "":
			b, err := os.ReadFile(c.File)
			if err != nil {
				fail(fmt.Errorf("case %d: %w", i, err))
			}
			src = string(b)
		default:
			fail(fmt.Errorf("case %d: neither script nor file", i))
		}
		var obj interface{}
		if err := json.Unmarshal(c.Obj, &obj); err != nil {
			fail(fmt.Errorf("case %d: obj: %w", i, err))
		}
		out = append(out, health(src, obj, c.OpenLibs))
	}
	enc := json.NewEncoder(os.Stdout)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(out); err != nil {
		fail(err)
	}
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "argocd-lua:", err)
	os.Exit(2)
}

// health is ExecuteHealthLua plus the controller's error handling (an error becomes health Unknown).
func health(script string, obj interface{}, openLibs bool) result {
	l := lua.NewState(lua.Options{SkipOpenLibs: !openLibs})
	defer l.Close()
	for _, pair := range []struct {
		n string
		f lua.LGFunction
	}{
		{lua.LoadLibName, lua.OpenPackage},
		{lua.BaseLibName, lua.OpenBase},
		{lua.TabLibName, lua.OpenTable},
		{lua.OsLibName, openSafeOs},
	} {
		if err := l.CallByParam(lua.P{Fn: l.NewFunction(pair.f), NRet: 0, Protect: true}, lua.LString(pair.n)); err != nil {
			fail(err)
		}
	}
	l.PreloadModule(lua.OsLibName, safeOsLoader)
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	l.SetContext(ctx)
	l.SetGlobal("obj", decodeValue(l, obj))
	if err := l.DoString(script); err != nil {
		return unknown(err.Error())
	}
	ret := l.Get(-1)
	tbl, ok := ret.(*lua.LTable)
	if !ok {
		return unknown(fmt.Sprintf("expect table output from Lua script, not %s", ret.Type().String()))
	}
	var r result
	for key, dst := range map[string]*string{"status": &r.Status, "message": &r.Message} {
		switch v := tbl.RawGetString(key).(type) {
		case *lua.LNilType:
		case lua.LString:
			*dst = string(v)
		default: // Argo CD JSON-encodes the table into HealthStatus: a non-string field fails to unmarshal
			return unknown(fmt.Sprintf("json: cannot unmarshal %s into HealthStatus.%s of type string", v.Type(), key))
		}
	}
	if !healthCodes[r.Status] {
		return result{Status: "Unknown", Message: "Lua returned an invalid health status"}
	}
	return r
}

func unknown(msg string) result {
	return result{Status: "Unknown", Message: msg, Error: msg}
}

// decodeValue converts decoded JSON to Lua values as Argo CD's decodeValue does (arrays become sequences).
func decodeValue(l *lua.LState, value interface{}) lua.LValue {
	switch v := value.(type) {
	case bool:
		return lua.LBool(v)
	case float64:
		return lua.LNumber(v)
	case string:
		return lua.LString(v)
	case []interface{}:
		arr := l.CreateTable(len(v), 0)
		for _, item := range v {
			arr.Append(decodeValue(l, item))
		}
		return arr
	case map[string]interface{}:
		tbl := l.CreateTable(0, len(v))
		for key, item := range v {
			tbl.RawSetH(lua.LString(key), decodeValue(l, item))
		}
		return tbl
	}
	return lua.LNil
}

// Argo CD's oslib_safe.go: only time and date. Its OpenSafeOs registers them under the module name
// lua.TabLibName; `table` is loaded by then, so gopher-lua's RegisterModule adds nothing and there is no
// global `os`: only `require("os")` (the preload) reaches them. Kept as is, to behave like Argo CD.
var safeOsFuncs = map[string]lua.LGFunction{"time": osTime, "date": osDate}

func openSafeOs(l *lua.LState) int {
	l.Push(l.RegisterModule(lua.TabLibName, safeOsFuncs))
	return 1
}

func safeOsLoader(l *lua.LState) int {
	l.Push(l.SetFuncs(l.NewTable(), safeOsFuncs))
	return 1
}

func osTime(l *lua.LState) int {
	if l.GetTop() == 0 {
		l.Push(lua.LNumber(time.Now().Unix()))
		return 1
	}
	tbl := l.CheckTable(1)
	field := func(key string, def int) int {
		if n, ok := tbl.RawGetString(key).(lua.LNumber); ok {
			return int(n)
		}
		return def
	}
	t := time.Date(field("year", -1), time.Month(field("month", -1)), field("day", -1),
		field("hour", 12), field("min", 0), field("sec", 0), 0, time.Local)
	l.Push(lua.LNumber(t.Unix()))
	return 1
}

// osDate supports what a health script could need: no argument, "*t" / "!*t" and a Unix time.
// (Argo CD also formats strftime patterns; health scripts here never call os.date.)
func osDate(l *lua.LState) int {
	t := time.Now()
	format := "%c"
	if l.GetTop() >= 1 {
		format = l.CheckString(1)
		if len(format) > 0 && format[0] == '!' {
			t = t.UTC()
			format = format[1:]
		}
		if l.GetTop() >= 2 {
			t = time.Unix(l.CheckInt64(2), 0)
		}
	}
	if len(format) >= 2 && format[:2] == "*t" {
		ret := l.NewTable()
		for key, v := range map[string]int{
			"year": t.Year(), "month": int(t.Month()), "day": t.Day(), "hour": t.Hour(), "min": t.Minute(),
			"sec": t.Second(), "wday": int(t.Weekday()) + 1, "yday": 0,
		} {
			ret.RawSetString(key, lua.LNumber(v))
		}
		ret.RawSetString("isdst", lua.LFalse)
		l.Push(ret)
		return 1
	}
	l.Push(lua.LString(t.Format("02 Jan 06 15:04 MST")))
	return 1
}
