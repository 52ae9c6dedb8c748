package supervisor

import (
	"errors"
	"strconv"
	"time"
	"unicode/utf16"
	"unicode/utf8"
)

// The supervisor reads and writes a few flat JSON objects (its config,
// requests, log lines, runc's log) with the small encoder and parser here
// rather than encoding/json, which with reflect would add about 0.5 MB to
// its binary. They write what encoding/json writes for the same values and
// read what it reads (though field names match exactly, not regardless of
// case); json_test.go checks both against it.

// appendString appends s as a JSON string, escaped as json.Marshal does
// (HTML characters included; invalid UTF-8 becomes U+FFFD).
func appendString(b []byte, s string) []byte {
	const hex = "0123456789abcdef"
	b = append(b, '"')
	start := 0
	for i := 0; i < len(s); {
		if c := s[i]; c < utf8.RuneSelf {
			if c >= 0x20 && c != '"' && c != '\\' && c != '<' && c != '>' && c != '&' {
				i++
				continue
			}
			b = append(b, s[start:i]...)
			switch c {
			case '"', '\\':
				b = append(b, '\\', c)
			case '\b':
				b = append(b, '\\', 'b')
			case '\f':
				b = append(b, '\\', 'f')
			case '\n':
				b = append(b, '\\', 'n')
			case '\r':
				b = append(b, '\\', 'r')
			case '\t':
				b = append(b, '\\', 't')
			default:
				b = append(b, '\\', 'u', '0', '0', hex[c>>4], hex[c&0xf])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			b = append(b, s[start:i]...)
			b = append(b, `\ufffd`...)
		} else if r == '\u2028' || r == '\u2029' {
			b = append(b, s[start:i]...)
			b = append(b, '\\', 'u', '2', '0', '2', hex[r&0xf])
		} else {
			i += size
			continue
		}
		i += size
		start = i
	}
	b = append(b, s[start:]...)
	return append(b, '"')
}

// object builds one JSON object.
type object struct{ b []byte }

func (o *object) key(k string) {
	if len(o.b) == 0 {
		o.b = append(o.b, '{')
	} else {
		o.b = append(o.b, ',')
	}
	o.b = appendString(o.b, k)
	o.b = append(o.b, ':')
}

func (o *object) str(k, v string) {
	o.key(k)
	o.b = appendString(o.b, v)
}

func (o *object) int(k string, v int64) {
	o.key(k)
	o.b = strconv.AppendInt(o.b, v, 10)
}

func (o *object) bool(k string, v bool) {
	o.key(k)
	o.b = strconv.AppendBool(o.b, v)
}

// time writes t as json.Marshal does (RFC 3339 with nanoseconds).
func (o *object) time(k string, t time.Time) {
	o.key(k)
	o.b = append(o.b, '"')
	o.b = t.AppendFormat(o.b, time.RFC3339Nano)
	o.b = append(o.b, '"')
}

// done is the object's JSON.
func (o *object) done() []byte {
	if len(o.b) == 0 {
		return []byte("{}")
	}
	return append(o.b, '}')
}

// fields is a parsed JSON object: its values are strings, bools, nil,
// number (a number's text), or nested fields and []any.
type fields map[string]any

// number is a JSON number's text.
type number string

var errSyntax = errors.New("invalid JSON")

// parseObject parses b, a JSON object.
func parseObject(b []byte) (fields, error) {
	p := &parser{b: b}
	v, err := p.value(0)
	if err != nil {
		return nil, err
	}
	p.space()
	f, ok := v.(fields)
	if !ok || p.i != len(p.b) {
		return nil, errSyntax
	}
	return f, nil
}

// str sets *v to the string at k, if any.
func (f fields) str(k string, v *string) error {
	switch x := f[k].(type) {
	case nil:
	case string:
		*v = x
	default:
		return errors.New("JSON field " + k + ": not a string")
	}
	return nil
}

// bool sets *v to the bool at k, if any.
func (f fields) bool(k string, v *bool) error {
	switch x := f[k].(type) {
	case nil:
	case bool:
		*v = x
	default:
		return errors.New("JSON field " + k + ": not a bool")
	}
	return nil
}

// uint16 sets *v to the number at k, if any.
func (f fields) uint16(k string, v *uint16) error {
	switch x := f[k].(type) {
	case nil:
	case number:
		n, err := strconv.ParseUint(string(x), 10, 16)
		if err != nil {
			return errors.New("JSON field " + k + ": not a uint16")
		}
		*v = uint16(n)
	default:
		return errors.New("JSON field " + k + ": not a number")
	}
	return nil
}

type parser struct {
	b []byte
	i int
}

func (p *parser) space() {
	for p.i < len(p.b) && (p.b[p.i] == ' ' || p.b[p.i] == '\t' || p.b[p.i] == '\n' || p.b[p.i] == '\r') {
		p.i++
	}
}

// next skips space and consumes c if it comes next.
func (p *parser) next(c byte) bool {
	p.space()
	if p.i < len(p.b) && p.b[p.i] == c {
		p.i++
		return true
	}
	return false
}

func (p *parser) literal(s string) bool {
	if len(p.b)-p.i >= len(s) && string(p.b[p.i:p.i+len(s)]) == s {
		p.i += len(s)
		return true
	}
	return false
}

func (p *parser) value(depth int) (any, error) {
	if depth > 100 {
		return nil, errSyntax
	}
	p.space()
	if p.i == len(p.b) {
		return nil, errSyntax
	}
	switch c := p.b[p.i]; {
	case c == '"':
		return p.string()
	case c == '{':
		p.i++
		f := fields{}
		if p.next('}') {
			return f, nil
		}
		for {
			p.space()
			k, err := p.string()
			if err != nil {
				return nil, err
			}
			if !p.next(':') {
				return nil, errSyntax
			}
			if f[k], err = p.value(depth + 1); err != nil {
				return nil, err
			}
			if p.next('}') {
				return f, nil
			}
			if !p.next(',') {
				return nil, errSyntax
			}
		}
	case c == '[':
		p.i++
		a := []any{}
		if p.next(']') {
			return a, nil
		}
		for {
			v, err := p.value(depth + 1)
			if err != nil {
				return nil, err
			}
			a = append(a, v)
			if p.next(']') {
				return a, nil
			}
			if !p.next(',') {
				return nil, errSyntax
			}
		}
	case p.literal("true"):
		return true, nil
	case p.literal("false"):
		return false, nil
	case p.literal("null"):
		return nil, nil
	case c == '-' || '0' <= c && c <= '9':
		return p.number()
	}
	return nil, errSyntax
}

// number parses -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?
func (p *parser) number() (number, error) {
	start := p.i
	p.literal("-")
	if !p.literal("0") && p.digits() == 0 { // a leading 0 stands alone
		return "", errSyntax
	}
	if p.literal(".") && p.digits() == 0 {
		return "", errSyntax
	}
	if p.literal("e") || p.literal("E") {
		if !p.literal("+") {
			p.literal("-")
		}
		if p.digits() == 0 {
			return "", errSyntax
		}
	}
	return number(p.b[start:p.i]), nil
}

// digits consumes digits and returns how many.
func (p *parser) digits() int {
	start := p.i
	for p.i < len(p.b) && '0' <= p.b[p.i] && p.b[p.i] <= '9' {
		p.i++
	}
	return p.i - start
}

// string parses a JSON string (invalid UTF-8 becomes U+FFFD, as with
// json.Unmarshal).
func (p *parser) string() (string, error) {
	if p.i == len(p.b) || p.b[p.i] != '"' {
		return "", errSyntax
	}
	p.i++
	var s []byte
	for p.i < len(p.b) {
		c := p.b[p.i]
		switch {
		case c == '"':
			p.i++
			return string(s), nil
		case c < 0x20:
			return "", errSyntax
		case c == '\\':
			if p.i+1 == len(p.b) {
				return "", errSyntax
			}
			e := p.b[p.i+1]
			p.i += 2
			switch e {
			case '"', '\\', '/':
				s = append(s, e)
			case 'b':
				s = append(s, '\b')
			case 'f':
				s = append(s, '\f')
			case 'n':
				s = append(s, '\n')
			case 'r':
				s = append(s, '\r')
			case 't':
				s = append(s, '\t')
			case 'u':
				r, ok := p.hex4()
				if !ok {
					return "", errSyntax
				}
				if utf16.IsSurrogate(r) {
					r2 := utf8.RuneError
					save := p.i
					if p.literal(`\u`) {
						r2, ok = p.hex4()
						if !ok {
							return "", errSyntax
						}
					}
					if d := utf16.DecodeRune(r, r2); d != utf8.RuneError {
						r = d
					} else {
						// A lone surrogate: U+FFFD, and what follows
						// is read on its own.
						r = utf8.RuneError
						p.i = save
					}
				}
				s = utf8.AppendRune(s, r)
			default:
				return "", errSyntax
			}
		case c < utf8.RuneSelf:
			s = append(s, c)
			p.i++
		default:
			r, size := utf8.DecodeRune(p.b[p.i:])
			p.i += size
			s = utf8.AppendRune(s, r)
		}
	}
	return "", errSyntax
}

func (p *parser) hex4() (rune, bool) {
	if len(p.b)-p.i < 4 {
		return 0, false
	}
	n, err := strconv.ParseUint(string(p.b[p.i:p.i+4]), 16, 16)
	if err != nil {
		return 0, false
	}
	p.i += 4
	return rune(n), true
}
