package api

import "time"

// Log streams a job's output line can come from. StreamInit carries lines
// from the platform about the job (start, exit, OOM).
const (
	LogStdout = "stdout"
	LogStderr = "stderr"
	LogInit   = "init"
)

// LogMessage is one line of a job's output as hosts ship it to the
// logaggregator (POST /log, newline-delimited JSON) and as readers get it
// back (GET /log/{app} with Accept: text/event-stream, event "message").
type LogMessage struct {
	AppID       string    `json:"app_id"`
	JobID       string    `json:"job_id,omitempty"`
	ProcessType string    `json:"process_type,omitempty"`
	Stream      string    `json:"stream"`
	Timestamp   time.Time `json:"timestamp"`
	Msg         string    `json:"msg"`
}

// LogIngestResult is the logaggregator's reply to POST /log.
type LogIngestResult struct {
	// Accepted is how many lines were stored.
	Accepted int `json:"accepted"`
}
