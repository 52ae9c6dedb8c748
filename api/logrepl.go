package api

// Log replication. Every host's shipper sends each line to every log
// aggregator instance, numbered in the shipper's own sequence (1, 2, ...),
// so an instance stores each line once, in the shipper's order, however
// often it is sent; a starting instance copies a live peer's buffers
// (GET /snapshot) before it serves. See package internal/logagg.

// Headers of a POST /log from a shipper.
const (
	// LogShipperHeader names the shipper whose numbered lines (LogShipped)
	// the request carries: an id of up to LogMaxShipperIDBytes letters,
	// digits, '-' or '_', random per shipper, never shared.
	LogShipperHeader = "Flynn-Log-Shipper"
	// LogOldestHeader is the oldest sequence number the shipper still
	// holds. An aggregator missing lines below it takes the gap; missing
	// lines the shipper still holds, it asks for them first
	// (LogIngestResult.Next).
	LogOldestHeader = "Flynn-Log-Oldest"
)

// LogMaxShipperIDBytes limits shipper ids.
const LogMaxShipperIDBytes = 64

// ValidLogShipperID reports whether s can name a shipper.
func ValidLogShipperID(s string) bool {
	if len(s) == 0 || len(s) > LogMaxShipperIDBytes {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
			return false
		}
	}
	return true
}

// LogShipped is a line as a shipper sends it (POST /log with
// LogShipperHeader): the message and its number in the shipper's
// sequence. A line without a number (0) is stored as it comes.
type LogShipped struct {
	LogMessage
	Seq uint64 `json:"seq,omitempty"`
}

// LogSnapshotHead is the first line of GET /snapshot; every app's buffered
// lines follow, one LogMessage per line, oldest first.
type LogSnapshotHead struct {
	// Shippers maps each shipper id to the last sequence number stored
	// from it: the lines that follow hold every line up to it that is
	// still buffered, and none after it.
	Shippers map[string]uint64 `json:"shippers"`
	// Lines is how many lines follow: fewer is a broken snapshot.
	Lines int `json:"lines"`
}
