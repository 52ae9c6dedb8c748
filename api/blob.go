package api

import "time"

// Blobstore headers. The blobstore sends the sha256 of every blob it serves
// both as the ETag (quoted hex) and in BlobSHA256Header (bare hex). A PUT
// may carry BlobSHA256Header too: the blobstore then refuses the upload
// when the body does not match it. A PUT with BlobCopyFromHeader copies
// the blob at that path instead of reading a body. GET and HEAD replies
// also carry BlobModifiedHeader, the blob's modification time to the
// nanosecond (RFC 3339): it is the blob's version, the same on every
// blobstore instance that holds that version (Last-Modified keeps only
// seconds).
const (
	BlobSHA256Header   = "Blob-Sha256"
	BlobCopyFromHeader = "Blobstore-Copy-From"
	BlobModifiedHeader = "Blobstore-Modified"
)

// BlobInfo describes one stored blob. PUT replies with it as JSON; HEAD and
// GET carry it in headers (Content-Length, ETag, Blob-Sha256,
// Last-Modified).
type BlobInfo struct {
	Path     string    `json:"path"`
	Size     int64     `json:"size"`
	SHA256   string    `json:"sha256,omitempty"`
	Modified time.Time `json:"modified"`
	// Copies is, in the reply to a PUT, how many blobstore instances
	// hold the blob when the PUT returns (0: the blobstore does not
	// replicate, it keeps one copy or uses a shared store).
	Copies int `json:"copies,omitempty"`
}

// BlobEntry is one entry of a blobstore directory listing: GET on a
// directory path (trailing slash, or ?dir=true) replies with a JSON array of
// them, sorted by name.
type BlobEntry struct {
	// Name is the entry's name inside the directory, without slashes.
	Name string `json:"name"`
	// Dir is true for a subdirectory.
	Dir      bool      `json:"dir,omitempty"`
	Size     int64     `json:"size,omitempty"`
	Modified time.Time `json:"modified,omitempty"`
}
