package api

import (
	"encoding/json"
	"time"
)

// Log streams a job's output line can come from. LogInit carries lines
// from the platform about the job (start, stop, OOM, exit).
const (
	LogStdout = "stdout"
	LogStderr = "stderr"
	LogInit   = "init"
)

// The platform's lines about a job (stream LogInit) that begin with these
// say how it started and ended; the exit (or failed start) is the last
// line of the job's log. The job's supervisor writes them.
const (
	LogInitStart  = "Starting process"
	LogInitExit   = "Process exited with status "
	LogInitFailed = "Failed to start the process: "
)

// LogMessage is one line of a job's output as hosts ship it to the
// logaggregator (POST /log, newline-delimited JSON) and as readers get it
// back: GET /log/{app} (and the controller's GET /apps/{app}/log) answer
// newline-delimited JSON LogMessages, or with Accept: text/event-stream
// one LogChunk per SSE event. The fields are a superset of Flynn's log
// message (host_id, job_id, msg, process_type, source, stream,
// timestamp), so Flynn's clients read them.
type LogMessage struct {
	AppID       string `json:"app_id"`
	HostID      string `json:"host_id,omitempty"`
	JobID       string `json:"job_id,omitempty"`
	ProcessType string `json:"process_type,omitempty"`
	// Source is what wrote the line; LogSourceApp for job output (the
	// logaggregator fills it in when a shipper leaves it empty).
	Source    string    `json:"source,omitempty"`
	Stream    string    `json:"stream"`
	Timestamp time.Time `json:"timestamp"`
	Msg       string    `json:"msg"`
}

// LogSourceApp is the Source of lines a job wrote.
const LogSourceApp = "app"

// LogChunk is the data of one SSE event of a log stream, as Flynn sends
// it: {"event":"message","data":LogMessage} per line, and
// {"event":"eof"} when a stream that does not follow has sent every line.
type LogChunk struct {
	Event string          `json:"event"`
	Data  json.RawMessage `json:"data,omitempty"`
}

// LogChunk events.
const (
	LogEventMessage = "message"
	LogEventEOF     = "eof"
)

// LogIngestResult is the logaggregator's reply to POST /log.
type LogIngestResult struct {
	// Accepted is how many lines were stored (for a shipper: stored or
	// held already).
	Accepted int `json:"accepted"`
	// Next is, for a shipper (LogShipperHeader), the number of the line
	// the aggregator wants next from it: the shipper sends from there.
	Next uint64 `json:"next,omitempty"`
}

// Limits on shipped log lines.
const (
	// LogMaxMsgBytes is the longest accepted message; shippers truncate.
	LogMaxMsgBytes = 64 << 10
	// LogMaxIDBytes limits job ids and process types.
	LogMaxIDBytes = 200
)

// ValidLogAppID reports whether s can name an app's log: 1-100 letters,
// digits, '.', '_' or '-', starting with a letter or digit (app UUIDs and
// app names both qualify).
func ValidLogAppID(s string) bool {
	if len(s) == 0 || len(s) > 100 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9':
		case i > 0 && (c == '.' || c == '_' || c == '-'):
		default:
			return false
		}
	}
	return true
}

// ValidLogStream reports whether s is stdout, stderr or init.
func ValidLogStream(s string) bool {
	return s == LogStdout || s == LogStderr || s == LogInit
}

// Validate checks the fields the logaggregator requires. A zero Timestamp
// is allowed: the receiver fills it in.
func (m *LogMessage) Validate() error {
	switch {
	case m.AppID == "":
		return Validation("app_id", "app_id is required")
	case !ValidLogAppID(m.AppID):
		return Validation("app_id", "app_id %q must be 1-100 letters, digits, '.', '_' or '-'", m.AppID)
	case len(m.JobID) > LogMaxIDBytes:
		return Validation("job_id", "job_id is longer than %d bytes", LogMaxIDBytes)
	case len(m.ProcessType) > LogMaxIDBytes || len(m.HostID) > LogMaxIDBytes || len(m.Source) > LogMaxIDBytes:
		return Validation("process_type", "process_type, host_id and source are at most %d bytes", LogMaxIDBytes)
	case !ValidLogStream(m.Stream):
		return Validation("stream", "stream %q must be stdout, stderr or init", m.Stream)
	case len(m.Msg) > LogMaxMsgBytes:
		return Validation("msg", "msg is longer than %d bytes; split or truncate it", LogMaxMsgBytes)
	}
	return nil
}
