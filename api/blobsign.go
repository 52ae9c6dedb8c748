package api

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// Signed blob URLs. A holder of a blobstore key gives a job access to one
// blob path, for reading, writing or both, until a time, without giving it
// the key: the URL carries BlobAccessParam, BlobExpiresParam and
// BlobSigParam, an HMAC-SHA256 of the three under the key. The blobstore
// checks it against each of its keys; the job can do nothing else with it.
const (
	BlobAccessParam  = "flynn-access"
	BlobExpiresParam = "flynn-expires"
	BlobSigParam     = "flynn-sig"
)

// Blob URL access modes.
const (
	BlobRead      = "r"
	BlobWrite     = "w"
	BlobReadWrite = "rw"
)

// BlobSignature is the signature of access to path (as the server sees
// it: unescaped, starting with /) until expires (Unix seconds) under key.
func BlobSignature(key, access, path string, expires int64) string {
	mac := hmac.New(sha256.New, []byte("flynn-blob-url\x00"+key))
	mac.Write([]byte(access + "\n" + strconv.FormatInt(expires, 10) + "\n" + path))
	return hex.EncodeToString(mac.Sum(nil))
}

// SignBlobURL returns base (the blobstore's URL, without a path) with
// path and a signature granting access to it until expires.
func SignBlobURL(base, key, access, path string, expires time.Time) string {
	q := url.Values{}
	q.Set(BlobAccessParam, access)
	q.Set(BlobExpiresParam, strconv.FormatInt(expires.Unix(), 10))
	q.Set(BlobSigParam, BlobSignature(key, access, path, expires.Unix()))
	parts := strings.Split(path, "/")
	for i, p := range parts {
		parts[i] = url.PathEscape(p)
	}
	return strings.TrimSuffix(base, "/") + strings.Join(parts, "/") + "?" + q.Encode()
}

// CheckBlobSignature reports whether q signs a request of method for path
// under key at now.
func CheckBlobSignature(q url.Values, key, method, path string, now time.Time) bool {
	sig, access := q.Get(BlobSigParam), q.Get(BlobAccessParam)
	exp, err := strconv.ParseInt(q.Get(BlobExpiresParam), 10, 64)
	if sig == "" || err != nil || now.Unix() > exp {
		return false
	}
	switch method {
	case "GET", "HEAD":
		if access != BlobRead && access != BlobReadWrite {
			return false
		}
	case "PUT":
		if access != BlobWrite && access != BlobReadWrite {
			return false
		}
	default:
		return false
	}
	return hmac.Equal([]byte(sig), []byte(BlobSignature(key, access, path, exp)))
}
