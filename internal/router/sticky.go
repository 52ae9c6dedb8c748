package router

import (
	"crypto/rand"
	"encoding/base64"
	"errors"
	"net/http"
	"strings"

	"golang.org/x/crypto/nacl/secretbox"
)

// stickyCookie is the cookie that pins a client to a backend. Its value is
// the backend address sealed with NaCl secretbox under the cookie key, so
// clients can neither read nor forge it.
const stickyCookie = "_backend"

type cookieKey [32]byte

func (k *cookieKey) seal(addr string) string {
	var nonce [24]byte
	rand.Read(nonce[:])
	out := secretbox.Seal(nonce[:], []byte(addr), &nonce, (*[32]byte)(k))
	return base64.RawURLEncoding.EncodeToString(out)
}

func (k *cookieKey) open(v string) (string, error) {
	b, err := base64.RawURLEncoding.DecodeString(v)
	if err != nil || len(b) < 24+secretbox.Overhead {
		return "", errors.New("malformed sticky cookie")
	}
	var nonce [24]byte
	copy(nonce[:], b[:24])
	addr, ok := secretbox.Open(nil, b[24:], &nonce, (*[32]byte)(k))
	if !ok {
		return "", errors.New("sticky cookie does not verify")
	}
	return string(addr), nil
}

// stickyAddr returns the backend address a request's sticky cookie
// names, if any (the first that verifies, over all its Cookie headers).
func (k *cookieKey) stickyAddr(r *http.Request) string {
	for _, v := range r.Header.Values("Cookie") {
		if addr := k.addrFromCookies(v); addr != "" {
			return addr
		}
	}
	return ""
}

// addrFromCookies returns the backend address the sticky cookie in v, a
// Cookie header's value, names, or "". It allocates nothing when there is
// no sticky cookie.
func (k *cookieKey) addrFromCookies(v string) string {
	for len(v) > 0 {
		var part string
		if j := strings.IndexByte(v, ';'); j >= 0 {
			part, v = v[:j], v[j+1:]
		} else {
			part, v = v, ""
		}
		part = strings.TrimLeft(part, " ")
		if val, ok := strings.CutPrefix(part, stickyCookie+"="); ok && val != "" {
			if addr, err := k.open(val); err == nil {
				return addr
			}
		}
	}
	return ""
}
