// Package logagg is Flynn's log aggregator: hosts ship each job's output
// lines to it (POST /log, newline-delimited JSON), it keeps the most recent
// lines of every app in a fixed-size in-memory ring buffer, and it serves
// them (GET /log/{app}) as newline-delimited JSON or Server-Sent Events,
// in the shapes Flynn's log clients read, filtered by job, process type and
// stream, optionally following new lines live.
//
// # Several instances
//
// A cluster runs several instances (registered in discoverd as
// "logaggregator" by the host agents that run them), and a reader may be
// sent to any of them, so each must hold every line. Each host's shipper
// (client/logaggclient.Shipper) sends every line to every instance, and
// the instances do not forward lines to each other. This design was
// chosen over forwarding between instances because it has fewer ways to
// fail:
//
//   - One sender per line and instance, in order. A shipper numbers its
//     lines (1, 2, ...; its id is random per shipper, so per host agent
//     process) and sends each instance the lines in that order, one batch
//     at a time. An instance stores a line only if it follows the last one
//     it stored from that shipper (its mark), so a batch sent again after a
//     lost reply is stored once, and a job's lines, which all come from one
//     shipper, are stored in the order the job wrote them. With forwarding,
//     a line reaches an instance both from a host and from a peer, and a
//     host that switches instances makes lines arrive out of order.
//   - The sender keeps the lines. The shipper holds its newest lines
//     (bounded) even once sent, and every reply says which line the
//     instance wants next. An instance that restarted, or was away, is sent
//     what it lacks while the shipper holds it; one that came back empty at
//     the same address refuses lines that would leave a gap the shipper can
//     still fill, so it is sent them first. With forwarding, an instance
//     that takes a line from a host and dies before passing it on loses it
//     for everyone.
//   - No loops and nothing to mark: instances never send lines to each
//     other, except a whole snapshot at start.
//
// The cost is that each host sends every line once per instance (two or
// three in practice).
//
// A starting instance with Config.Peers copies the buffers of the first
// live peer (GET /snapshot: the shippers' marks, then every app's lines,
// taken together), and only then listens; since the host agent registers
// it once it accepts connections, neither shippers nor readers reach it
// before it holds the history. Shippers then send it only the lines after
// the copied marks. Two instances starting at once find no live peer and
// start empty; the shippers then send them every line they hold.
//
// Known limits: an instance a host cannot reach for longer than the host
// holds lines (10000 lines or 16 MiB by default) misses those lines until
// it restarts and copies a peer's; a follow stream ends when the instance
// serving it stops, and `flynn log -f` then exits instead of following on
// through another (Flynn's SSE shape has no event ids to resume from).
package logagg
