package router

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"html"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/net/http/httpguts"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/flynnrebuilt/flynn/api"
)

// The router's own HTTP/2 server, for HTTPS connections that negotiate h2.
// net/http's serves each stream with a handler goroutine and writes its
// frames through another, flushing a response's HEADERS and DATA apart;
// here a stream's goroutine proxies it over a pooled HTTP/1.1 backend
// connection, as the fast path does, and writes the whole response (HEADERS
// and the DATA already buffered) with one flush. Frames are parsed and
// written with x/net/http2's Framer and header blocks coded with its hpack.
//
// One goroutine per connection reads frames (serveH2): it answers SETTINGS
// and PING, keeps the flow-control windows, queues request bodies and
// starts a goroutine per stream (serveStream). Writes go through one
// buffered writer under wmu.

const (
	// h2MaxStreams is the most streams one connection may have open, and
	// the most stream goroutines it may have running (a stream the client
	// resets counts until its goroutine is done).
	h2MaxStreams = 250
	// h2Window is the receive window of each stream and of the connection:
	// the most request body bytes buffered for them.
	h2Window = 1 << 20
	// h2MaxWriteFrame bounds the DATA frames written.
	h2MaxWriteFrame = 16 << 10
)

var h2Preface = []byte(http2.ClientPreface)

type h2Conn struct {
	s  *fastServer
	fc *fastConn
	tc *tls.Conn
	ip string
	br *bufio.Reader
	fr *http2.Framer  // reads, by the reader only
	wg sync.WaitGroup // stream goroutines

	// The reader runs readLoop, in one goroutine at a time. A request
	// without a body that arrives alone on the connection is served by
	// the reader itself (inline): no goroutine is started for it, and the
	// connection is not read again (a read that would fail, the client
	// waiting for the response) until the response is out. If it takes
	// longer than h2InlineMax, inlineTimer starts another goroutine that
	// takes the reading over (readerState), so frames for other streams
	// wait no longer than that.
	readerState atomic.Int32
	inlineTimer *time.Timer
	inlineNext  *h2Stream
	// The reader's state, kept here to pass from reader to reader.
	rd        readDeadline
	first     bool
	needFlush bool
	// ended is closed when the connection is done.
	ended   chan struct{}
	endOnce sync.Once

	// mu guards the streams and the counts.
	mu        sync.Mutex
	streams   map[uint32]*h2Stream
	running   int    // stream goroutines
	lastID    uint32 // the highest stream id the client opened
	goingAway bool   // GOAWAY sent: no new streams

	// wmu guards writing and the flow-control state.
	wmu   sync.Mutex
	wcond sync.Cond // on wmu: send window grew, or the connection ended
	bw    *bufio.Writer
	wfr   *http2.Framer
	henc  *hpack.Encoder
	hbuf  bytes.Buffer
	werr  error // the first write error; every later write fails with it
	// recent are the last response header fields written (valueString).
	recent     [8]hpack.HeaderField
	nextRecent int
	// closed is set when the connection is ending: writers give up.
	closed bool
	// sendWindow is what the client lets us send on the connection;
	// peerWindow is its initial window for each stream; peerMaxFrame its
	// largest frame.
	sendWindow   int64
	peerWindow   int64
	peerMaxFrame uint32
	// recvWindow is what the client may still send on the connection;
	// recvUnacked, what was consumed and not yet granted back.
	recvWindow  int64
	recvUnacked int64
}

type h2Stream struct {
	c   *h2Conn
	id  uint32
	req h2Req
	// bodyCut: the backend answered before it took the whole body, and
	// closed (send); its connection is not pooled.
	bodyCut bool

	// Under c.wmu.
	sendWindow  int64
	recvWindow  int64
	recvUnacked int64
	windowWait  timedWait

	// Under c.mu: the client ended its side (END_STREAM or RST_STREAM).
	remoteClosed bool
	// Read loop only: DATA bytes received, against req.contentLen.
	received int64

	reset atomic.Bool // the client reset the stream or left
	up    atomic.Pointer[upConn]
	body  h2Body
	// herr is the error the router answered with itself, for the app's
	// log; newID the request id it made, when the client sent none.
	herr  *routerError
	newID [32]byte
	hasID bool
}

// h2Req is a request's head, checked.
type h2Req struct {
	method, authority, path, lookupPath string
	fields                              []hpack.HeaderField // regular fields to forward
	cookies                             []string
	xff                                 []string
	requestID                           string
	contentLen                          int64 // -1: not given
	hasBody                             bool
	expectContinue                      bool
	wantsHTML                           bool
}

// serveH2 serves an HTTP/2 connection until it ends.
func (s *fastServer) serveH2(fc *fastConn, tc *tls.Conn) {
	cfg := &s.r.cfg
	c := &h2Conn{
		s: s, fc: fc, tc: tc,
		streams:      map[uint32]*h2Stream{},
		sendWindow:   65535,
		peerWindow:   65535,
		peerMaxFrame: 16384,
		recvWindow:   h2Window,
	}
	c.wcond.L = &c.wmu
	c.ip = tc.RemoteAddr().String()
	if h, _, err := net.SplitHostPort(c.ip); err == nil {
		c.ip = h
	}
	c.br = readerPool.Get().(*bufio.Reader)
	c.br.Reset(tc)
	c.bw = bufio.NewWriterSize(tc, 32<<10)
	c.wfr = http2.NewFramer(c.bw, nil)
	c.henc = hpack.NewEncoder(&c.hbuf)
	c.fr = http2.NewFramer(nil, c.br)
	c.fr.SetMaxReadFrameSize(16 << 10)
	c.fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	c.fr.MaxHeaderListSize = uint32(cfg.MaxHeaderBytes)

	// The server's preface, written at once.
	c.wmu.Lock()
	c.wfr.WriteSettings(
		http2.Setting{ID: http2.SettingMaxConcurrentStreams, Val: h2MaxStreams},
		http2.Setting{ID: http2.SettingInitialWindowSize, Val: h2Window},
		http2.Setting{ID: http2.SettingMaxHeaderListSize, Val: uint32(cfg.MaxHeaderBytes)},
	)
	c.wfr.WriteWindowUpdate(0, h2Window-65535)
	c.werr = c.bw.Flush()
	c.wmu.Unlock()

	c.ended = make(chan struct{})
	c.inlineTimer = time.AfterFunc(time.Hour, c.inlineTooLong)
	c.inlineTimer.Stop()
	c.first = true
	c.rd = readDeadline{conn: tc}
	c.rd.set(time.Now().Add(cfg.ReadHeaderTimeout))
	var pre [24]byte
	if _, err := io.ReadFull(c.br, pre[:]); err != nil || !bytes.Equal(pre[:], h2Preface) {
		c.goAway(http2.ErrCodeProtocol)
		c.end()
		releaseSlot(fc.conn)
		tc.Close()
		c.br.Reset(nil)
		readerPool.Put(c.br)
		return
	}
	c.runReader()
	// This goroutine stays the connection's (for the fast server's
	// count) until it is done, whichever goroutine reads it.
	<-c.ended
}

const (
	h2Reading = iota
	h2Inline
	h2Passed
)

// h2InlineMax is how long a request served inline may keep the
// connection unread.
const h2InlineMax = time.Millisecond

// errH2Passed ends a reader whose reading another goroutine took over.
var errH2Passed = errors.New("h2 reader passed on")

// runReader reads the connection until it ends, and then ends it, unless
// another goroutine took the reading over.
func (c *h2Conn) runReader() {
	defer c.recoverPanic(true)
	err := c.readLoop()
	if err == errH2Passed {
		return
	}
	c.inlineTimer.Stop()
	var ce http2.ConnectionError
	switch {
	case errors.As(err, &ce):
		c.goAway(http2.ErrCode(ce))
	case errors.Is(err, http2.ErrFrameTooLarge):
		c.goAway(http2.ErrCodeFrameSize)
	case err == errH2Done:
		c.goAway(http2.ErrCodeNo)
	}
	c.end()
	releaseSlot(c.fc.conn)
	c.tc.Close()
	c.wg.Wait()
	c.br.Reset(nil)
	readerPool.Put(c.br)
	c.endOnce.Do(func() { close(c.ended) })
}

// recoverPanic keeps a bug in serving one connection from ending the
// router: the panic is logged and the connection closed (its goroutines
// then fail their IO and end). reader is set in a reader, which also marks
// the connection done.
func (c *h2Conn) recoverPanic(reader bool) {
	p := recover()
	if p == nil {
		return
	}
	c.s.r.log.Error("h2 connection panicked", "panic", p, "stack", string(debug.Stack()))
	c.tc.Close()
	if reader {
		// A reader serving a request inline is not replaced by its timer
		// now; one that replaced it already ends on the closed connection.
		c.readerState.Store(h2Passed)
		c.endOnce.Do(func() { close(c.ended) })
	}
}

// inlineTooLong passes the reading on from a reader serving a request
// inline.
func (c *h2Conn) inlineTooLong() {
	if c.readerState.CompareAndSwap(h2Inline, h2Passed) {
		go c.runReader()
	}
}

// errH2Done ends a connection gracefully: idle, or the router shutting
// down with no stream left.
var errH2Done = errors.New("h2 connection done")

// readLoop reads and handles frames until the connection ends.
func (c *h2Conn) readLoop() error {
	cfg := &c.s.r.cfg
	c.readerState.Store(h2Reading)
	rd := &c.rd
	for {
		if st := c.inlineNext; st != nil {
			c.inlineNext = nil
			c.serveInline(st)
			if !c.readerState.CompareAndSwap(h2Inline, h2Reading) {
				return errH2Passed
			}
			// The response is flushed: with -m1-like clients the next
			// request is often there by the time the other ready
			// goroutines have run.
			if c.br.Buffered() == 0 {
				runtime.Gosched()
			}
		}
		if c.br.Buffered() == 0 {
			if c.needFlush {
				c.wmu.Lock()
				c.flushLocked()
				werr := c.werr
				c.wmu.Unlock()
				c.needFlush = false
				if werr != nil {
					return werr // the client stopped reading
				}
			}
			if c.s.closing.Load() {
				if c.startGoAway() {
					return errH2Done
				}
			}
			c.fc.idle.Store(true)
			if !c.first {
				rd.extend(time.Time{}, cfg.IdleTimeout)
			}
			_, err := c.br.Peek(1)
			c.fc.idle.Store(false)
			if err != nil {
				if !isTimeout(err) {
					return err
				}
				if c.s.closing.Load() || c.isGoingAway() {
					if c.startGoAway() {
						return errH2Done
					}
					rd.set(time.Now().Add(cfg.IdleTimeout))
					// The last stream may have ended, and woken this
					// loop, before the deadline was set again.
					if c.startGoAway() {
						return errH2Done
					}
					continue
				}
				if c.first {
					return err
				}
				c.mu.Lock()
				busy := c.running > 0
				c.mu.Unlock()
				if !busy {
					return errH2Done
				}
				rd.set(time.Now().Add(cfg.IdleTimeout))
				continue
			}
		}
		f, err := c.fr.ReadFrame()
		if err != nil {
			var se http2.StreamError
			if errors.As(err, &se) {
				// A frame that broke a stream's rules (a header block that
				// decoded but is invalid, for one): that stream ends, the
				// connection goes on.
				c.noteStreamID(se.StreamID)
				c.mu.Lock()
				st := c.streams[se.StreamID]
				c.mu.Unlock()
				if st != nil {
					c.resetStream(st, se.Code)
				} else {
					c.writeRST(se.StreamID, se.Code)
				}
				c.needFlush = true
				continue
			}
			return err
		}
		if c.first {
			if _, ok := f.(*http2.SettingsFrame); !ok {
				return http2.ConnectionError(http2.ErrCodeProtocol)
			}
			c.first = false
			rd.set(time.Time{})
		}
		if err := c.handle(f); err != nil {
			return err
		}
		c.needFlush = true
	}
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

func (c *h2Conn) isGoingAway() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.goingAway
}

// startGoAway sends GOAWAY once, and reports whether no stream is left.
func (c *h2Conn) startGoAway() bool {
	c.mu.Lock()
	first := !c.goingAway
	c.goingAway = true
	last, idle := c.lastID, c.running == 0
	c.mu.Unlock()
	if first && !idle {
		c.wmu.Lock()
		c.wfr.WriteGoAway(last, http2.ErrCodeNo, nil)
		c.flushLocked()
		c.wmu.Unlock()
	}
	return idle
}

// goAway sends a final GOAWAY with code.
func (c *h2Conn) goAway(code http2.ErrCode) {
	c.mu.Lock()
	last := c.lastID
	c.mu.Unlock()
	c.wmu.Lock()
	if c.werr == nil {
		c.tc.SetWriteDeadline(time.Now().Add(time.Second))
		c.wfr.WriteGoAway(last, code, nil)
		c.flushLocked()
	}
	c.wmu.Unlock()
}

// end stops every stream: their backend requests are aborted, their writes
// fail.
func (c *h2Conn) end() {
	c.wmu.Lock()
	c.closed = true
	c.wcond.Broadcast()
	c.wmu.Unlock()
	c.mu.Lock()
	for id, st := range c.streams {
		st.abort()
		delete(c.streams, id)
	}
	c.mu.Unlock()
}

func (c *h2Conn) noteStreamID(id uint32) {
	c.mu.Lock()
	if id > c.lastID && id%2 == 1 {
		c.lastID = id
	}
	c.mu.Unlock()
}

// flushLocked flushes the writer, with wmu held.
func (c *h2Conn) flushLocked() {
	if c.werr == nil {
		c.werr = c.bw.Flush()
	}
}

func (c *h2Conn) writeRST(id uint32, code http2.ErrCode) {
	c.wmu.Lock()
	if c.werr == nil {
		c.werr = c.wfr.WriteRSTStream(id, code)
	}
	c.wmu.Unlock()
}

// handle handles one frame from the client. An error ends the connection.
func (c *h2Conn) handle(f http2.Frame) error {
	switch f := f.(type) {
	case *http2.SettingsFrame:
		return c.handleSettings(f)
	case *http2.PingFrame:
		if !f.IsAck() {
			c.wmu.Lock()
			if c.werr == nil {
				c.werr = c.wfr.WritePing(true, f.Data)
			}
			c.wmu.Unlock()
		}
	case *http2.WindowUpdateFrame:
		return c.handleWindowUpdate(f)
	case *http2.MetaHeadersFrame:
		return c.handleHeaders(f)
	case *http2.DataFrame:
		return c.handleData(f)
	case *http2.RSTStreamFrame:
		c.mu.Lock()
		if f.StreamID > c.lastID {
			c.mu.Unlock()
			return http2.ConnectionError(http2.ErrCodeProtocol) // an idle stream
		}
		st := c.streams[f.StreamID]
		if st != nil {
			delete(c.streams, f.StreamID)
			st.remoteClosed = true
		}
		c.mu.Unlock()
		if st != nil {
			st.abort()
		}
	case *http2.PriorityFrame:
		if f.StreamDep == f.StreamID {
			c.writeRST(f.StreamID, http2.ErrCodeProtocol)
		}
	case *http2.GoAwayFrame:
		// The client opens no more streams; those open finish.
	case *http2.PushPromiseFrame:
		return http2.ConnectionError(http2.ErrCodeProtocol)
	case *http2.ContinuationFrame:
		return http2.ConnectionError(http2.ErrCodeProtocol) // the Framer joins the valid ones
	}
	return nil
}

func (c *h2Conn) handleSettings(f *http2.SettingsFrame) error {
	if f.IsAck() {
		return nil
	}
	if err := f.ForeachSetting(func(s http2.Setting) error { return s.Valid() }); err != nil {
		return err
	}
	// Lock order: mu, then wmu.
	c.mu.Lock()
	defer c.mu.Unlock()
	c.wmu.Lock()
	defer c.wmu.Unlock()
	err := f.ForeachSetting(func(s http2.Setting) error {
		switch s.ID {
		case http2.SettingHeaderTableSize:
			c.henc.SetMaxDynamicTableSizeLimit(s.Val)
		case http2.SettingInitialWindowSize:
			delta := int64(s.Val) - c.peerWindow
			c.peerWindow = int64(s.Val)
			for _, st := range c.streams {
				st.sendWindow += delta
				if st.sendWindow > 1<<31-1 {
					return http2.ConnectionError(http2.ErrCodeFlowControl)
				}
			}
			c.wcond.Broadcast()
		case http2.SettingMaxFrameSize:
			c.peerMaxFrame = s.Val
		}
		return nil
	})
	if err != nil {
		return err
	}
	if c.werr == nil {
		c.werr = c.wfr.WriteSettingsAck()
	}
	return nil
}

func (c *h2Conn) handleWindowUpdate(f *http2.WindowUpdateFrame) error {
	inc := int64(f.Increment)
	if f.StreamID == 0 {
		c.wmu.Lock()
		c.sendWindow += inc
		over := c.sendWindow > 1<<31-1
		c.wcond.Broadcast()
		c.wmu.Unlock()
		if over {
			return http2.ConnectionError(http2.ErrCodeFlowControl)
		}
		return nil
	}
	c.mu.Lock()
	if f.StreamID > c.lastID {
		c.mu.Unlock()
		return http2.ConnectionError(http2.ErrCodeProtocol)
	}
	st := c.streams[f.StreamID]
	c.mu.Unlock()
	if st == nil {
		return nil // a stream that ended
	}
	c.wmu.Lock()
	st.sendWindow += inc
	over := st.sendWindow > 1<<31-1
	c.wcond.Broadcast()
	c.wmu.Unlock()
	if over {
		c.resetStream(st, http2.ErrCodeFlowControl)
	}
	return nil
}

// resetStream ends st with RST_STREAM code.
func (c *h2Conn) resetStream(st *h2Stream, code http2.ErrCode) {
	c.mu.Lock()
	if c.streams[st.id] == st {
		delete(c.streams, st.id)
	}
	st.remoteClosed = true
	c.mu.Unlock()
	st.abort()
	c.writeRST(st.id, code)
}

func (c *h2Conn) handleData(f *http2.DataFrame) error {
	id := f.StreamID
	n := int64(f.Length)
	c.wmu.Lock()
	if n > c.recvWindow {
		c.wmu.Unlock()
		return http2.ConnectionError(http2.ErrCodeFlowControl)
	}
	c.recvWindow -= n
	c.wmu.Unlock()
	c.mu.Lock()
	if id > c.lastID {
		c.mu.Unlock()
		return http2.ConnectionError(http2.ErrCodeProtocol) // an idle stream
	}
	st := c.streams[id]
	if st == nil || st.remoteClosed {
		c.mu.Unlock()
		// A stream that ended: its bytes go back to the connection's
		// window, and the client is told the stream is closed.
		c.grantConn(n)
		if st != nil {
			c.resetStream(st, http2.ErrCodeStreamClosed)
		} else {
			c.writeRST(id, http2.ErrCodeStreamClosed)
		}
		return nil
	}
	data := f.Data()
	st.received += int64(len(data))
	if f.StreamEnded() {
		st.remoteClosed = true
	}
	c.mu.Unlock()
	c.wmu.Lock()
	if n > st.recvWindow {
		c.wmu.Unlock()
		c.grantConn(n)
		c.resetStream(st, http2.ErrCodeFlowControl)
		return nil
	}
	st.recvWindow -= n
	c.wmu.Unlock()
	// Padding is granted back at once; the data when it is read.
	if pad := n - int64(len(data)); pad > 0 {
		c.grantConn(pad)
	}
	r := &st.req
	if r.contentLen >= 0 && (st.received > r.contentLen || f.StreamEnded() && st.received != r.contentLen) {
		// The body does not match its content-length: malformed.
		c.grantConn(int64(len(data)))
		c.resetStream(st, http2.ErrCodeProtocol)
		return nil
	}
	if discarded := st.body.put(data, f.StreamEnded()); discarded {
		c.grantConn(int64(len(data)))
	}
	return nil
}

// grantConn gives n consumed bytes back to the client's connection window,
// in batches.
func (c *h2Conn) grantConn(n int64) {
	c.wmu.Lock()
	c.grantConnLocked(n)
	c.wmu.Unlock()
}

func (c *h2Conn) grantConnLocked(n int64) {
	c.recvUnacked += n
	if c.recvUnacked >= h2Window/4 && c.werr == nil {
		c.werr = c.wfr.WriteWindowUpdate(0, uint32(c.recvUnacked))
		c.recvWindow += c.recvUnacked
		c.recvUnacked = 0
	}
}

// handleHeaders opens a stream, or ends one's body with trailers.
func (c *h2Conn) handleHeaders(f *http2.MetaHeadersFrame) error {
	id := f.StreamID
	if id%2 == 0 {
		return http2.ConnectionError(http2.ErrCodeProtocol)
	}
	c.mu.Lock()
	if id <= c.lastID {
		st := c.streams[id]
		if st == nil {
			c.mu.Unlock()
			return http2.ConnectionError(http2.ErrCodeStreamClosed)
		}
		if st.remoteClosed || !f.StreamEnded() {
			c.mu.Unlock()
			c.resetStream(st, http2.ErrCodeProtocol)
			return nil
		}
		// Trailers: the body ends here; their fields are not forwarded.
		st.remoteClosed = true
		c.mu.Unlock()
		if st.req.contentLen >= 0 && st.received != st.req.contentLen {
			c.resetStream(st, http2.ErrCodeProtocol)
			return nil
		}
		st.body.put(nil, true)
		return nil
	}
	c.lastID = id
	refuse := c.goingAway || c.running >= h2MaxStreams
	c.mu.Unlock()
	if f.HasPriority() && f.Priority.StreamDep == id {
		c.writeRST(id, http2.ErrCodeProtocol)
		return nil
	}
	if refuse {
		c.writeRST(id, http2.ErrCodeRefusedStream)
		return nil
	}
	st := &h2Stream{c: c, id: id}
	st.body.cond.L = &st.body.mu
	status, msg := parseH2Request(f, &st.req)
	if status == -1 {
		c.writeRST(id, http2.ErrCodeProtocol)
		return nil
	}
	st.req.hasBody = !f.StreamEnded()
	if !st.req.hasBody && st.req.contentLen > 0 {
		c.writeRST(id, http2.ErrCodeProtocol)
		return nil
	}
	c.wmu.Lock()
	st.sendWindow = c.peerWindow
	st.recvWindow = h2Window
	c.wmu.Unlock()
	if !st.req.hasBody {
		st.body.eof = true
	}
	c.mu.Lock()
	c.streams[id] = st
	st.remoteClosed = !st.req.hasBody
	c.running++
	alone := c.running == 1
	c.mu.Unlock()
	if status == 0 && !st.req.hasBody && alone && c.br.Buffered() == 0 && !c.s.closing.Load() {
		c.inlineNext = st
		return nil
	}
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		defer c.recoverPanic(false)
		if status != 0 {
			st.writeError(status, api.CodeValidation, msg)
		} else {
			c.serveStream(st)
		}
		c.finish(st)
	}()
	return nil
}

// finish ends st after its response: a client still sending a body is
// told to stop, the body's unread bytes go back to the connection window.
func (c *h2Conn) finish(st *h2Stream) {
	c.mu.Lock()
	open := false
	if c.streams[st.id] == st {
		delete(c.streams, st.id)
		open = !st.remoteClosed
		st.remoteClosed = true
	}
	c.running--
	wake := c.goingAway && c.running == 0
	c.mu.Unlock()
	if n := st.body.discard(); n > 0 {
		c.grantConn(int64(n))
	}
	c.wmu.Lock()
	if open && c.werr == nil {
		c.werr = c.wfr.WriteRSTStream(st.id, http2.ErrCodeNo)
	}
	c.flushLocked()
	c.wmu.Unlock()
	if wake {
		// The read loop waits for the last stream to end the connection.
		c.tc.SetReadDeadline(aLongTimeAgo)
	}
}

// abort ends the stream's backend request and body.
func (st *h2Stream) abort() {
	st.reset.Store(true)
	if pc := st.up.Load(); pc != nil {
		pc.conn.SetDeadline(aLongTimeAgo)
	}
	st.body.fail(errClientHungUp)
	c := st.c
	c.wmu.Lock()
	c.wcond.Broadcast()
	c.wmu.Unlock()
}

// setUp records the backend connection the stream waits on, for abort.
func (st *h2Stream) setUp(pc *upConn) {
	st.up.Store(pc)
	if pc != nil && st.reset.Load() {
		pc.conn.SetDeadline(aLongTimeAgo)
	}
}

// parseH2Request checks a request's header block and fills r. It returns
// -1 for a malformed request (reset), or an HTTP status and message for a
// request that is answered with an error, or 0.
func parseH2Request(f *http2.MetaHeadersFrame, r *h2Req) (int, string) {
	if f.Truncated {
		return http.StatusRequestHeaderFieldsTooLarge, "the request headers are too large"
	}
	var scheme string
	havePath := false
	for _, hf := range f.PseudoFields() {
		switch hf.Name {
		case ":method":
			r.method = hf.Value
		case ":scheme":
			scheme = hf.Value
		case ":authority":
			r.authority = hf.Value
		case ":path":
			r.path = hf.Value
			havePath = true
		default: // :protocol, without SETTINGS_ENABLE_CONNECT_PROTOCOL
			return -1, ""
		}
	}
	if r.method == "" || !validMethod(r.method) {
		return -1, ""
	}
	if r.method == http.MethodConnect {
		if scheme != "" || havePath || r.authority == "" {
			return -1, ""
		}
		return http.StatusMethodNotAllowed, "the router does not proxy CONNECT"
	}
	if scheme == "" || !havePath || r.path == "" {
		return -1, ""
	}
	r.contentLen = -1
	host := ""
	regular := f.RegularFields()
	r.fields = make([]hpack.HeaderField, 0, len(regular))
	for _, hf := range regular {
		switch hf.Name {
		case "connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade":
			return -1, ""
		case "te":
			if hf.Value != "trailers" {
				return -1, ""
			}
			continue
		case "host":
			if host == "" {
				host = hf.Value
			}
			continue
		case "content-length":
			n, ok := parseContentLength([]byte(strings.TrimSpace(hf.Value)))
			if !ok || r.contentLen >= 0 && n != r.contentLen {
				return -1, ""
			}
			r.contentLen = n
			continue
		case "cookie":
			r.cookies = append(r.cookies, hf.Value)
			continue
		case "x-forwarded-for":
			r.xff = append(r.xff, hf.Value)
			continue
		case "x-request-id":
			if r.requestID == "" {
				r.requestID = hf.Value
			}
			continue
		case "expect":
			if strings.EqualFold(strings.TrimSpace(hf.Value), "100-continue") {
				r.expectContinue = true
			}
			continue
		case "accept":
			if strings.Contains(hf.Value, "text/html") {
				r.wantsHTML = true
			}
		case "x-forwarded-proto", "x-forwarded-port", "x-request-start", "proxy-authorization", "proxy-authenticate", "trailer":
			continue
		}
		r.fields = append(r.fields, hf)
	}
	if r.authority == "" {
		r.authority = host
	}
	if r.authority == "" || !httpguts.ValidHostHeader(r.authority) || strings.IndexByte(r.authority, '@') >= 0 {
		return http.StatusBadRequest, "the request has no valid :authority or Host"
	}
	if r.path == "*" {
		if r.method != http.MethodOptions {
			return -1, ""
		}
	} else if r.path[0] != '/' {
		return -1, ""
	}
	for i := 0; i < len(r.path); i++ {
		if ch := r.path[i]; ch <= ' ' || ch >= 0x7f || ch == '#' {
			return http.StatusBadRequest, "the request target has characters it may not have"
		}
	}
	r.lookupPath = r.path
	if i := strings.IndexByte(r.path, '?'); i >= 0 {
		r.lookupPath = r.path[:i]
	}
	if strings.IndexByte(r.lookupPath, '%') >= 0 {
		p, err := url.PathUnescape(r.lookupPath)
		if err != nil {
			return http.StatusBadRequest, "the request path is not validly percent-encoded"
		}
		r.lookupPath = p
	}
	return 0, ""
}

func methodWantsLengthString(m string) bool {
	return m == "POST" || m == "PUT" || m == "PATCH"
}

func validMethod(m string) bool {
	for i := 0; i < len(m); i++ {
		if !isTokenChar(m[i]) {
			return false
		}
	}
	return true
}

// serveInline serves st on the reader's goroutine, which a timer hands
// the reading on from after h2InlineMax. The stream counts in c.wg until
// it ends, panicking or not: a reader that took over waits for it before
// ending the connection.
func (c *h2Conn) serveInline(st *h2Stream) {
	c.wg.Add(1)
	defer c.wg.Done()
	c.readerState.Store(h2Inline)
	c.inlineTimer.Reset(h2InlineMax)
	c.serveStream(st)
	c.finish(st)
	c.inlineTimer.Stop()
}

// testHookServeStream, set only by tests, runs as each stream is served.
var testHookServeStream atomic.Pointer[func(path string)]

// serveStream proxies one request.
func (c *h2Conn) serveStream(st *h2Stream) {
	if hook := testHookServeStream.Load(); hook != nil {
		(*hook)(st.req.path)
	}
	start := time.Now()
	r := c.s.r
	req := &st.req
	e := r.table.Load().lookup(req.authority, req.lookupPath)
	if e == nil {
		r.metrics.noRoute.Inc()
		st.writeError(http.StatusNotFound, api.CodeNotFound, "no route matches "+req.authority+req.lookupPath)
		return
	}
	var status int
	if e.maxBody >= 0 && req.contentLen > e.maxBody {
		status = http.StatusRequestEntityTooLarge
		st.writeError(status, api.CodeTooLarge, "the request body is larger than the "+strconv.FormatInt(e.maxBody, 10)+" bytes this route takes")
	} else {
		status = c.proxy(st, e, start)
	}
	d := time.Since(start)
	e.metrics.observe(status, d)
	if (st.herr != nil || status == statusClientClosed) && r.applog != nil {
		c.logError(st, e, status, d)
	}
	if r.log.Enabled(context.Background(), slog.LevelDebug) {
		r.log.Debug("request", "route", e.route.ID, "method", req.method, "host", req.authority,
			"path", req.lookupPath, "status", status, "duration", d, "proto", "h2")
	}
}

// logError writes the request the router ended itself into the app's log.
func (c *h2Conn) logError(st *h2Stream, e *routeEntry, status int, d time.Duration) {
	herr := st.herr
	if status == statusClientClosed {
		herr = errClientGone
	}
	id := st.req.requestID
	if !validRequestID(id) && st.hasID {
		id = string(st.newID[:])
	}
	c.s.r.applog.log(e, errorLine{err: herr, method: st.req.method, path: st.req.path, host: st.req.authority,
		requestID: id, fwd: c.ip, proto: "h2", service: d, status: status})
}

func (c *h2Conn) proxy(st *h2Stream, e *routeEntry, start time.Time) int {
	at := startAttempts(e)
	set := at.set
	var sticky string
	if at.sticky {
		for _, v := range st.req.cookies {
			if sticky = c.s.r.cookies.addrFromCookies(v); sticky != "" {
				break
			}
		}
		at.prefer(sticky)
	}
	for b := at.next(); b != nil; b = at.next() {
		b.acquire()
		var pc *upConn
		var err error
		if e.route.DisableKeepAlives {
			pc, err = b.dial(context.Background())
		} else {
			pc, err = b.getConn(context.Background(), st.req.hasBody)
		}
		if err != nil {
			b.release()
			markDown(set, b, err)
			c.s.r.log.Debug("backend dial failed", "route", e.route.ID, "addr", b.addr, "err", err)
			if st.reset.Load() {
				return statusClientClosed
			}
			continue
		}
		status := c.roundTrip(st, e, b, pc, start, e.route.Sticky && b.addr != sticky)
		b.release()
		if status == retryHostDown {
			markHostDown(set, b)
		}
		if status == retryElsewhere || status == retryHostDown {
			continue
		}
		return status
	}
	st.writeError(http.StatusServiceUnavailable, api.CodeUnavailable, "no backend is available for "+st.req.authority+": the app may be scaled to zero or starting")
	return http.StatusServiceUnavailable
}

// roundTrip sends the request over pc and relays the response, retrying
// like the fast path's.
func (c *h2Conn) roundTrip(st *h2Stream, e *routeEntry, b *backend, pc *upConn, start time.Time, setCookie bool) int {
	req := &st.req
	st.setUp(pc)
	defer st.setUp(nil)
	pc.bound(!req.hasBody)
	pc.armProbe()
	// The probe timer is stopped before pc can go back to the pool, where
	// another request may arm it.
	probing := pc
	defer func() {
		if probing != nil {
			probing.disarmProbe()
		}
	}()
	head, err := c.send(st, e, pc, start)
	if err != nil && st.reset.Load() {
		err = errClientHungUp
	}
	if err != nil && !req.hasBody && isUnreachable(err) {
		pc.conn.Close()
		if !pc.probed.Load() || idempotent(req.method) {
			return retryHostDown
		}
		b.markDown()
		st.writeError(http.StatusBadGateway, api.CodeUnavailable, msgHostVanished)
		return http.StatusBadGateway
	}
	if err != nil && pc.reused && !req.hasBody && isStale(err) {
		pc.conn.Close()
		pc, err = b.dial(context.Background())
		if err != nil {
			b.markDown()
			return retryElsewhere
		}
		st.setUp(pc)
		pc.bound(true)
		probing.disarmProbe()
		pc.armProbe()
		probing = pc
		head, err = c.send(st, e, pc, start)
	}
	if err != nil {
		pc.conn.Close()
		if err == errClientHungUp || st.reset.Load() {
			return statusClientClosed
		}
		switch bodyStatus(err) {
		case http.StatusRequestTimeout:
			st.writeError(http.StatusRequestTimeout, api.CodeValidation, msgBodyStalled)
			return http.StatusRequestTimeout
		case http.StatusRequestEntityTooLarge:
			st.writeError(http.StatusRequestEntityTooLarge, api.CodeTooLarge,
				"the request body is larger than the "+strconv.FormatInt(e.maxBody, 10)+" bytes this route takes")
			return http.StatusRequestEntityTooLarge
		}
		if errors.Is(err, errClientBody) {
			return statusClientClosed
		}
		c.s.r.log.Debug("backend request failed", "route", e.route.ID, "addr", b.addr, "err", err)
		st.writeError(http.StatusBadGateway, api.CodeUnavailable, msgBackendFailed)
		return http.StatusBadGateway
	}
	var resp fastResp
	for {
		resp = fastResp{}
		if !parseResponseHead(head, &resp) {
			pc.conn.Close()
			st.writeError(http.StatusBadGateway, api.CodeUnavailable, msgMalformed)
			return http.StatusBadGateway
		}
		if resp.status >= 200 || resp.status == http.StatusSwitchingProtocols {
			break
		}
		pc.br.Discard(len(head)) // informational: skipped
		if head, err = peekHead(pc.br, pc.br.Size()); err != nil {
			pc.conn.Close()
			st.writeError(http.StatusBadGateway, api.CodeUnavailable, msgBackendFailed)
			return http.StatusBadGateway
		}
	}
	if resp.status == http.StatusSwitchingProtocols {
		pc.conn.Close()
		st.writeError(http.StatusBadGateway, api.CodeUnavailable, msgSwitched)
		return http.StatusBadGateway
	}
	noBody := req.method == http.MethodHead || resp.status == 204 || resp.status == 304
	var cookie string
	if setCookie {
		cookie = stickyCookie + "=" + c.s.r.cookies.seal(b.addr) + "; Path=/; HttpOnly"
	}
	var clen int64 = -1
	if !resp.chunked {
		clen = resp.contentLen
	}
	endOnHead := noBody || clen == 0
	if !st.writeHead(resp.status, head, resp.lines[:resp.nlines], cookie, clen, endOnHead) {
		pc.br.Discard(len(head))
		pc.conn.Close()
		return statusClientClosed
	}
	pc.br.Discard(len(head))
	upstreamOK, clientOK := true, true
	switch {
	case endOnHead:
	case resp.chunked:
		upstreamOK, clientOK = st.relayChunked(pc.br)
	case resp.contentLen >= 0:
		upstreamOK, clientOK = st.relayN(pc.br, resp.contentLen, true)
	default:
		upstreamOK, clientOK = st.relayUntilEOF(pc.br)
		resp.close = true
	}
	// In this order, against abort's: an abort that saw pc has set reset
	// before, and pc is not pooled with its deadline about to be cut.
	st.setUp(nil)
	pc.disarmProbe()
	probing = nil
	if upstreamOK && clientOK && !resp.close && !e.route.DisableKeepAlives && !st.reset.Load() && !st.bodyCut {
		b.putConn(pc)
	} else {
		pc.conn.Close()
	}
	if !clientOK {
		return statusClientClosed
	}
	if !upstreamOK {
		// The backend failed mid-response: the stream is reset so the
		// client sees the truncation.
		c.resetStream(st, http2.ErrCodeInternal)
	}
	return resp.status
}

// send writes the request to the backend as HTTP/1.1 and peeks the
// response head.
func (c *h2Conn) send(st *h2Stream, e *routeEntry, pc *upConn, start time.Time) ([]byte, error) {
	req := &st.req
	w := pc.bw
	w.WriteString(req.method)
	w.WriteByte(' ')
	w.WriteString(req.path)
	w.WriteString(" HTTP/1.1\r\nHost: ")
	w.WriteString(req.authority)
	w.WriteString("\r\n")
	for _, hf := range req.fields {
		w.WriteString(hf.Name)
		w.WriteString(": ")
		w.WriteString(hf.Value)
		w.WriteString("\r\n")
	}
	if len(req.cookies) > 0 {
		// HTTP/2 may split cookies; HTTP/1.1 wants one field (RFC 9113, 8.2.3).
		w.WriteString("Cookie: ")
		for i, v := range req.cookies {
			if i > 0 {
				w.WriteString("; ")
			}
			w.WriteString(v)
		}
		w.WriteString("\r\n")
	}
	w.WriteString("X-Forwarded-For: ")
	for _, v := range req.xff {
		w.WriteString(v)
		w.WriteString(", ")
	}
	w.WriteString(c.ip)
	w.WriteString("\r\nX-Forwarded-Proto: ")
	w.WriteString(c.s.fe.proto)
	w.WriteString("\r\nX-Forwarded-Port: ")
	w.WriteString(c.s.fe.port)
	w.WriteString("\r\nX-Request-Start: ")
	w.Write(strconv.AppendInt(w.AvailableBuffer(), start.UnixMilli(), 10))
	w.WriteString("\r\nX-Request-Id: ")
	if req.requestID != "" && validRequestID(req.requestID) {
		w.WriteString(req.requestID)
	} else {
		writeNewRequestID(w, &st.newID)
		st.hasID = true
	}
	w.WriteString("\r\n")
	if e.route.DisableKeepAlives {
		w.WriteString("Connection: close\r\n")
	}
	chunked := false
	switch {
	case req.contentLen >= 0 && (req.hasBody || req.contentLen == 0 && methodWantsLengthString(req.method)):
		w.WriteString("Content-Length: ")
		w.Write(strconv.AppendInt(w.AvailableBuffer(), req.contentLen, 10))
		w.WriteString("\r\n")
	case req.hasBody:
		chunked = true
		w.WriteString("Transfer-Encoding: chunked\r\n")
	case methodWantsLengthString(req.method):
		w.WriteString("Content-Length: 0\r\n")
	}
	w.WriteString("\r\n")
	if req.hasBody {
		if req.expectContinue {
			req.expectContinue = false
			if !st.writeContinue() {
				return nil, errClientHungUp
			}
		}
		if err := st.copyBody(w, e, chunked); err != nil {
			return st.earlyResponse(pc, err)
		}
	}
	pc.ww.waitNext = pc.canWait(start)
	err := w.Flush()
	pc.ww.waitNext = false
	if err != nil {
		if req.hasBody {
			return st.earlyResponse(pc, err)
		}
		return nil, err
	}
	return peekHead(pc.br, pc.br.Size())
}

// earlyResponse is, when err is the backend's close while the body was
// being written to it, the response head it sent before (earlyHead);
// else err. finish then ends the stream with RST_STREAM
// NO_ERROR, which asks the client to stop sending (RFC 9113, 8.1).
func (st *h2Stream) earlyResponse(pc *upConn, err error) ([]byte, error) {
	head, ok := earlyHead(pc, err)
	if !ok {
		return nil, err
	}
	st.bodyCut = true
	return head, nil
}

// copyBody copies the request body to w, as it is or chunked, granting the
// client window as it goes.
func (st *h2Stream) copyBody(w *bufio.Writer, e *routeEntry, chunked bool) error {
	bp := bufPool.Get().(*[]byte)
	defer bufPool.Put(bp)
	buf := *bp
	var total int64
	for {
		n, err := st.body.read(buf, e.bodyIdle)
		if n > 0 {
			total += int64(n)
			if e.maxBody >= 0 && total > e.maxBody {
				return errors.Join(errClientBody, &clientBodyError{&http.MaxBytesError{Limit: e.maxBody}})
			}
			if chunked {
				w.Write(strconv.AppendInt(w.AvailableBuffer(), int64(n), 16))
				w.WriteString("\r\n")
			}
			if _, err := w.Write(buf[:n]); err != nil {
				return err
			}
			if chunked {
				w.WriteString("\r\n")
			}
			st.grant(n)
		}
		if err == io.EOF {
			break
		}
		if err != nil {
			if errors.Is(err, os.ErrDeadlineExceeded) {
				return errors.Join(errClientBody, &clientBodyError{err})
			}
			return err
		}
	}
	if chunked {
		_, err := w.WriteString("0\r\n\r\n")
		return err
	}
	return nil
}

// grant gives n body bytes read back to the client's windows, in batches.
func (st *h2Stream) grant(n int) {
	c := st.c
	c.wmu.Lock()
	c.grantConnLocked(int64(n))
	st.recvUnacked += int64(n)
	if st.recvUnacked >= h2Window/4 && c.werr == nil && !st.body.ended() {
		c.werr = c.wfr.WriteWindowUpdate(st.id, uint32(st.recvUnacked))
		st.recvWindow += st.recvUnacked
		st.recvUnacked = 0
	}
	c.flushLocked()
	c.wmu.Unlock()
}

// writeContinue sends a 100 (Continue) for a client that waits for one.
func (st *h2Stream) writeContinue() bool {
	c := st.c
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if !st.writableLocked() {
		return false
	}
	c.hbuf.Reset()
	c.henc.WriteField(hpack.HeaderField{Name: ":status", Value: "100"})
	c.writeHeaderBlockLocked(st.id, false)
	c.flushLocked()
	return c.werr == nil
}

func (st *h2Stream) writableLocked() bool {
	return st.c.werr == nil && !st.c.closed && !st.reset.Load()
}

// writeHeaderBlockLocked writes c.hbuf as HEADERS and CONTINUATION frames.
func (c *h2Conn) writeHeaderBlockLocked(id uint32, endStream bool) {
	block := c.hbuf.Bytes()
	max := int(min(c.peerMaxFrame, h2MaxWriteFrame))
	first := true
	for first || len(block) > 0 {
		frag := block
		if len(frag) > max {
			frag = frag[:max]
		}
		block = block[len(frag):]
		var err error
		if first {
			err = c.wfr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: frag, EndStream: endStream, EndHeaders: len(block) == 0})
			first = false
		} else {
			err = c.wfr.WriteContinuation(id, len(block) == 0, frag)
		}
		if err != nil {
			c.werr = err
			return
		}
	}
}

// writeHead writes the response's HEADERS: the backend's end-to-end header
// lines (offsets into head), the sticky cookie, the length.
func (st *h2Stream) writeHead(status int, head []byte, lines [][2]int32, cookie string, clen int64, endStream bool) bool {
	c := st.c
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if !st.writableLocked() {
		return false
	}
	c.hbuf.Reset()
	c.henc.WriteField(hpack.HeaderField{Name: ":status", Value: statusText3(status)})
	var lower [64]byte
	for _, l := range lines {
		line := head[l[0]:l[1]]
		colon := bytes.IndexByte(line, ':')
		name := line[:colon]
		value := bytes.Trim(line[colon+1:], " \t")
		n, ok := h2FieldName(name, lower[:0])
		if !ok || !httpguts.ValidHeaderFieldValue(view(value)) {
			continue
		}
		c.henc.WriteField(hpack.HeaderField{Name: n, Value: c.valueString(n, value)})
	}
	if cookie != "" {
		c.henc.WriteField(hpack.HeaderField{Name: "set-cookie", Value: cookie})
	}
	if clen >= 0 {
		c.henc.WriteField(hpack.HeaderField{Name: "content-length", Value: strconv.FormatInt(clen, 10)})
	}
	c.writeHeaderBlockLocked(st.id, endStream)
	if endStream {
		c.flushLocked()
	}
	return c.werr == nil
}

// valueString returns value as a string, with wmu held: the string of an
// equal value of the same field among the last few written when there is
// one (a response's header values mostly repeat the last one's), else a
// new one.
func (c *h2Conn) valueString(name string, value []byte) string {
	for i := range c.recent {
		if f := &c.recent[i]; f.Name == name && f.Value == string(value) {
			return f.Value
		}
	}
	v := string(value)
	c.recent[c.nextRecent] = hpack.HeaderField{Name: name, Value: v}
	c.nextRecent = (c.nextRecent + 1) % len(c.recent)
	return v
}

// h2FieldName returns a response header's name in lower case, and false
// for a name HTTP/2 cannot carry.
func h2FieldName(name, scratch []byte) (string, bool) {
	if len(name) == 0 {
		return "", false
	}
	for _, ch := range name {
		if !isTokenChar(ch) {
			return "", false
		}
		if 'A' <= ch && ch <= 'Z' {
			ch += 'a' - 'A'
		}
		scratch = append(scratch, ch)
	}
	if s, ok := commonH2Names[string(scratch)]; ok {
		return s, true
	}
	return string(scratch), true
}

var commonH2Names = map[string]string{}

func init() {
	for _, n := range []string{"accept-ranges", "access-control-allow-origin", "age", "cache-control", "content-disposition",
		"content-encoding", "content-language", "content-location", "content-range", "content-security-policy",
		"content-type", "date", "etag", "expires", "last-modified", "link", "location", "referrer-policy", "retry-after",
		"server", "set-cookie", "strict-transport-security", "vary", "via", "www-authenticate", "x-content-type-options",
		"x-frame-options", "x-powered-by", "x-request-id", "x-backend"} {
		commonH2Names[n] = n
	}
	for i := range statusStrings {
		statusStrings[i] = strconv.Itoa(100 + i)
	}
}

var statusStrings [500]string

func statusText3(status int) string {
	if status >= 100 && status < 600 {
		return statusStrings[status-100]
	}
	return strconv.Itoa(status)
}

// writeData writes p as DATA frames within the client's windows; with end,
// the last one ends the stream. It reports whether the client can still be
// written to.
func (st *h2Stream) writeData(p []byte, end bool) bool {
	c := st.c
	c.wmu.Lock()
	defer c.wmu.Unlock()
	for {
		if !st.writableLocked() {
			return false
		}
		if len(p) == 0 {
			if end {
				c.werr = c.wfr.WriteData(st.id, true, nil)
			}
			return c.werr == nil
		}
		avail := min(c.sendWindow, st.sendWindow, int64(min(c.peerMaxFrame, h2MaxWriteFrame)))
		if avail <= 0 {
			if !st.waitWindowLocked() {
				return false
			}
			continue
		}
		n := min(int64(len(p)), avail)
		c.werr = c.wfr.WriteData(st.id, end && n == int64(len(p)), p[:n])
		c.sendWindow -= n
		st.sendWindow -= n
		p = p[n:]
		if len(p) == 0 {
			return c.werr == nil
		}
	}
}

// waitWindowLocked waits, with wmu held, for the client to grant window. A
// client that grants none for WriteIdleTimeout has the stream reset.
func (st *h2Stream) waitWindowLocked() bool {
	c := st.c
	c.flushLocked()
	if c.werr != nil {
		return false
	}
	timedOut := st.windowWait.wait(&c.wcond, c.s.r.cfg.WriteIdleTimeout, func() bool {
		return !st.writableLocked() || c.sendWindow > 0 && st.sendWindow > 0
	})
	if timedOut {
		st.reset.Store(true)
		c.wfr.WriteRSTStream(st.id, http2.ErrCodeCancel)
		c.flushLocked()
		return false
	}
	return st.writableLocked()
}

func (st *h2Stream) flush() bool {
	c := st.c
	c.wmu.Lock()
	defer c.wmu.Unlock()
	c.flushLocked()
	return c.werr == nil
}

// relayN relays n body bytes from src. With end, the last DATA frame ends
// the stream. The client is flushed whenever the backend has nothing more
// buffered, so slow bodies stream.
func (st *h2Stream) relayN(src *bufio.Reader, n int64, end bool) (upstreamOK, clientOK bool) {
	if n == 0 && end {
		return true, st.writeData(nil, true) && st.flush()
	}
	for n > 0 {
		if src.Buffered() == 0 {
			if !st.flush() {
				return false, false
			}
			if _, err := src.Peek(1); err != nil {
				return false, true
			}
		}
		chunk, _ := src.Peek(int(min(int64(src.Buffered()), n)))
		n -= int64(len(chunk))
		if !st.writeData(chunk, end && n == 0) {
			return false, false
		}
		src.Discard(len(chunk))
	}
	return true, st.flush()
}

// relayChunked relays a chunked body's data, and its trailers as a final
// HEADERS frame.
func (st *h2Stream) relayChunked(src *bufio.Reader) (upstreamOK, clientOK bool) {
	for {
		if src.Buffered() == 0 && !st.flush() {
			return false, false
		}
		line, err := src.ReadSlice('\n')
		if err != nil || len(line) < 3 || line[len(line)-2] != '\r' {
			return false, true
		}
		size, ok := parseChunkSize(line[:len(line)-2])
		if !ok {
			return false, true
		}
		if size == 0 {
			break
		}
		if ok, cok := st.relayN(src, size, false); !ok || !cok {
			return ok, cok
		}
		crlf, err := src.ReadSlice('\n')
		if err != nil || len(crlf) != 2 || crlf[0] != '\r' {
			return false, true
		}
	}
	// Trailers, up to the blank line.
	var trailers []hpack.HeaderField
	var lower [64]byte
	for {
		tl, err := src.ReadSlice('\n')
		if err != nil || len(tl) < 2 || tl[len(tl)-2] != '\r' {
			return false, true
		}
		if len(tl) == 2 {
			break
		}
		name, value, ok := bytes.Cut(tl[:len(tl)-2], []byte(":"))
		if !ok {
			continue
		}
		n, ok := h2FieldName(name, lower[:0])
		value = bytes.Trim(value, " \t")
		if !ok || !httpguts.ValidHeaderFieldValue(view(value)) {
			continue
		}
		switch n {
		case "content-length", "transfer-encoding", "connection", "keep-alive", "te", "trailer", "upgrade", "host":
			continue
		}
		trailers = append(trailers, hpack.HeaderField{Name: n, Value: string(value)})
	}
	if len(trailers) == 0 {
		return true, st.writeData(nil, true) && st.flush()
	}
	c := st.c
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if !st.writableLocked() {
		return true, false
	}
	c.hbuf.Reset()
	for _, f := range trailers {
		c.henc.WriteField(f)
	}
	c.writeHeaderBlockLocked(st.id, true)
	c.flushLocked()
	return true, c.werr == nil
}

// relayUntilEOF relays a close-delimited body.
func (st *h2Stream) relayUntilEOF(src *bufio.Reader) (upstreamOK, clientOK bool) {
	for {
		if src.Buffered() == 0 && !st.flush() {
			return false, false
		}
		if _, err := src.Peek(1); err != nil {
			if !errors.Is(err, io.EOF) {
				return false, true
			}
			return true, st.writeData(nil, true) && st.flush()
		}
		chunk, _ := src.Peek(src.Buffered())
		if !st.writeData(chunk, false) {
			return false, false
		}
		src.Discard(len(chunk))
	}
}

// writeError answers with the router's own error: HTML for browsers, JSON
// otherwise.
func (st *h2Stream) writeError(status int, code api.ErrorCode, msg string) {
	st.herr = routerErrorFor(status, msg)
	var body []byte
	ctype := "application/json"
	if st.req.wantsHTML {
		ctype = "text/html; charset=utf-8"
		body = []byte("<!DOCTYPE html>\n<html><head><title>" + strconv.Itoa(status) + " " + http.StatusText(status) +
			"</title></head><body><h1>" + http.StatusText(status) + "</h1><p>" + html.EscapeString(msg) + "</p></body></html>\n")
	} else {
		body, _ = json.Marshal(&api.Error{Code: code, Message: msg})
		body = append(body, '\n')
	}
	c := st.c
	c.wmu.Lock()
	if !st.writableLocked() {
		c.wmu.Unlock()
		return
	}
	c.hbuf.Reset()
	c.henc.WriteField(hpack.HeaderField{Name: ":status", Value: statusText3(status)})
	c.henc.WriteField(hpack.HeaderField{Name: "content-type", Value: ctype})
	c.henc.WriteField(hpack.HeaderField{Name: "content-length", Value: strconv.Itoa(len(body))})
	head := st.req.method == http.MethodHead
	c.writeHeaderBlockLocked(st.id, head)
	c.wmu.Unlock()
	if !head {
		st.writeData(body, true)
	}
	st.flush()
}

// h2Body is a request body as it arrives in DATA frames.
type h2Body struct {
	mu   sync.Mutex
	cond sync.Cond // on mu
	buf  []byte
	off  int
	eof  bool
	err  error
	gone bool // the stream ended: nothing more is kept
	wait timedWait
}

// put queues data; end marks the body's end. It reports whether the data
// was dropped (the stream is done with its body).
func (b *h2Body) put(data []byte, end bool) (discarded bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.gone || b.err != nil {
		return len(data) > 0
	}
	if b.off == len(b.buf) {
		b.buf, b.off = b.buf[:0], 0
	} else if b.off > 0 && len(b.buf)+len(data) > cap(b.buf) {
		// What was read goes before the buffer grows: the unread bytes
		// are bounded by the stream's window, the buffer is too.
		n := copy(b.buf, b.buf[b.off:])
		b.buf, b.off = b.buf[:n], 0
	}
	b.buf = append(b.buf, data...)
	if end {
		b.eof = true
	}
	b.cond.Broadcast()
	return false
}

func (b *h2Body) fail(err error) {
	b.mu.Lock()
	if b.err == nil {
		b.err = err
	}
	b.cond.Broadcast()
	b.mu.Unlock()
}

// ended reports whether the client sent all of the body.
func (b *h2Body) ended() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.eof
}

// discard ends the body for good and returns how many bytes were left
// unread.
func (b *h2Body) discard() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	n := len(b.buf) - b.off
	b.buf, b.off, b.gone = nil, 0, true
	return n
}

// read reads body bytes, waiting up to idle (0: no limit) for them.
func (b *h2Body) read(p []byte, idle time.Duration) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.wait.wait(&b.cond, idle, func() bool { return b.off < len(b.buf) || b.eof || b.err != nil })
	if b.off < len(b.buf) {
		n := copy(p, b.buf[b.off:])
		b.off += n
		return n, nil
	}
	switch {
	case b.err != nil:
		return 0, b.err
	case b.eof:
		return 0, io.EOF
	default:
		return 0, os.ErrDeadlineExceeded
	}
}

// timedWait is a wait on a sync.Cond with a time limit.
type timedWait struct {
	// timedOut is set by the timer of the wait of generation gen; a timer
	// that fires after its wait ended finds another generation.
	timedOut bool
	gen      uint64
}

// wait waits, with cond.L held, until ready holds or, with limit > 0, limit
// has passed; it reports whether the limit passed first.
func (w *timedWait) wait(cond *sync.Cond, limit time.Duration, ready func() bool) bool {
	if ready() {
		return false
	}
	w.gen++
	gen := w.gen
	w.timedOut = false
	var t *time.Timer
	if limit > 0 {
		t = time.AfterFunc(limit, func() {
			cond.L.Lock()
			if w.gen == gen {
				w.timedOut = true
				cond.Broadcast()
			}
			cond.L.Unlock()
		})
	}
	for !ready() && !w.timedOut {
		cond.Wait()
	}
	w.gen++
	if t != nil {
		t.Stop()
	}
	return !ready()
}
