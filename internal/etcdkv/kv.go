package etcdkv

import (
	"context"
	"fmt"
)

// KeyValue is a key as etcd stores it. The gateway sends int64s as JSON
// strings and bytes as base64, which the tags decode.
type KeyValue struct {
	Key            []byte `json:"key,omitempty"`
	Value          []byte `json:"value,omitempty"`
	CreateRevision int64  `json:"create_revision,omitempty,string"`
	ModRevision    int64  `json:"mod_revision,omitempty,string"`
	Version        int64  `json:"version,omitempty,string"`
	Lease          int64  `json:"lease,omitempty,string"`
}

// ResponseHeader is the header of every answer.
type ResponseHeader struct {
	ClusterID uint64 `json:"cluster_id,omitempty,string"`
	MemberID  uint64 `json:"member_id,omitempty,string"`
	Revision  int64  `json:"revision,omitempty,string"`
	RaftTerm  uint64 `json:"raft_term,omitempty,string"`
}

// GetResponse answers Get (a range).
type GetResponse struct {
	Header *ResponseHeader `json:"header"`
	Kvs    []*KeyValue     `json:"kvs"`
	More   bool            `json:"more"`
	Count  int64           `json:"count,omitempty,string"`
}

// PutResponse answers Put.
type PutResponse struct {
	Header *ResponseHeader `json:"header"`
	PrevKv *KeyValue       `json:"prev_kv"`
}

// DeleteResponse answers Delete.
type DeleteResponse struct {
	Header  *ResponseHeader `json:"header"`
	Deleted int64           `json:"deleted,omitempty,string"`
	PrevKvs []*KeyValue     `json:"prev_kvs"`
}

// TxnResponse answers a transaction: Succeeded says whether its
// comparisons held, Responses are those of the branch that ran, in order.
type TxnResponse struct {
	Header    *ResponseHeader `json:"header"`
	Succeeded bool            `json:"succeeded"`
	Responses []*ResponseOp   `json:"responses"`
}

// ResponseOp is one operation's answer in a transaction.
type ResponseOp struct {
	ResponseRange       *GetResponse    `json:"response_range,omitempty"`
	ResponsePut         *PutResponse    `json:"response_put,omitempty"`
	ResponseDeleteRange *DeleteResponse `json:"response_delete_range,omitempty"`
	ResponseTxn         *TxnResponse    `json:"response_txn,omitempty"`
}

// GetResponseRange returns the answer of a get, or nil.
func (r *ResponseOp) GetResponseRange() *GetResponse { return r.ResponseRange }

// GetResponsePut returns the answer of a put, or nil.
func (r *ResponseOp) GetResponsePut() *PutResponse { return r.ResponsePut }

// GetResponseDeleteRange returns the answer of a delete, or nil.
func (r *ResponseOp) GetResponseDeleteRange() *DeleteResponse { return r.ResponseDeleteRange }

// The ordering of a range.
type (
	SortTarget int
	SortOrder  int
)

// Sort targets and orders, as etcd numbers them.
const (
	SortByKey SortTarget = iota
	SortByVersion
	SortByCreateRevision
	SortByModRevision
	SortByValue
)

const (
	SortNone SortOrder = iota
	SortAscend
	SortDescend
)

// LeaseID names a lease; NoLease is none.
type LeaseID int64

const NoLease LeaseID = 0

type opType int

const (
	tRange opType = iota + 1
	tPut
	tDelete
)

// Op is one operation, for Txn (OpGet, OpPut, OpDelete) or done at once
// (Get, Put, Delete).
type Op struct {
	t     opType
	key   []byte
	end   []byte
	val   []byte
	lease LeaseID

	prefix, fromKey bool

	rev          int64
	limit        int64
	sortTarget   SortTarget
	sortOrder    SortOrder
	serializable bool
	keysOnly     bool
	countOnly    bool
	prevKV       bool

	minModRev, maxModRev, maxCreateRev int64
}

// OpOption modifies an Op.
type OpOption func(*Op)

// WithPrefix makes the operation cover every key starting with its key.
func WithPrefix() OpOption { return func(op *Op) { op.prefix = true } }

// WithFromKey makes the operation cover every key >= its key.
func WithFromKey() OpOption { return func(op *Op) { op.fromKey = true } }

// WithRev reads at revision rev (a watch: starts at rev).
func WithRev(rev int64) OpOption { return func(op *Op) { op.rev = rev } }

// WithLimit returns at most n keys.
func WithLimit(n int64) OpOption { return func(op *Op) { op.limit = n } }

// WithSort orders a range.
func WithSort(target SortTarget, order SortOrder) OpOption {
	return func(op *Op) { op.sortTarget, op.sortOrder = target, order }
}

// WithSerializable lets the member answer a read from its own state,
// without asking the leader.
func WithSerializable() OpOption { return func(op *Op) { op.serializable = true } }

// WithKeysOnly returns keys without values.
func WithKeysOnly() OpOption { return func(op *Op) { op.keysOnly = true } }

// WithCountOnly returns only the count of keys.
func WithCountOnly() OpOption { return func(op *Op) { op.countOnly = true } }

// WithPrevKV returns (a watch: sends) the key-values before the change.
func WithPrevKV() OpOption { return func(op *Op) { op.prevKV = true } }

// WithLease attaches a put's key to lease id.
func WithLease(id LeaseID) OpOption { return func(op *Op) { op.lease = id } }

// WithMinModRev, WithMaxModRev and WithMaxCreateRev filter a range by
// the keys' revisions (inclusive bounds).
func WithMinModRev(rev int64) OpOption    { return func(op *Op) { op.minModRev = rev } }
func WithMaxModRev(rev int64) OpOption    { return func(op *Op) { op.maxModRev = rev } }
func WithMaxCreateRev(rev int64) OpOption { return func(op *Op) { op.maxCreateRev = rev } }

// WithLastCreate gets the key with the highest create revision.
func WithLastCreate() []OpOption {
	return []OpOption{WithSort(SortByCreateRevision, SortDescend), WithLimit(1)}
}

func newOp(t opType, key string, opts []OpOption) Op {
	op := Op{t: t, key: []byte(key)}
	for _, o := range opts {
		o(&op)
	}
	switch {
	case op.prefix:
		op.end = prefixEnd(op.key)
	case op.fromKey:
		op.end = []byte{0}
	}
	return op
}

// prefixEnd is the first key after every key starting with p.
func prefixEnd(p []byte) []byte {
	end := append([]byte(nil), p...)
	for i := len(end) - 1; i >= 0; i-- {
		if end[i] < 0xff {
			end[i]++
			return end[:i+1]
		}
	}
	// All 0xff (or empty): to the end of the keyspace.
	return []byte{0}
}

// OpGet, OpPut and OpDelete are operations for Txn.
func OpGet(key string, opts ...OpOption) Op { return newOp(tRange, key, opts) }

func OpPut(key, val string, opts ...OpOption) Op {
	op := newOp(tPut, key, opts)
	op.val = []byte(val)
	return op
}

func OpDelete(key string, opts ...OpOption) Op { return newOp(tDelete, key, opts) }

// The gateway's request bodies.
type rangeRequest struct {
	Key               []byte `json:"key"`
	RangeEnd          []byte `json:"range_end,omitempty"`
	Limit             int64  `json:"limit,omitempty,string"`
	Revision          int64  `json:"revision,omitempty,string"`
	SortOrder         int    `json:"sort_order,omitempty"`
	SortTarget        int    `json:"sort_target,omitempty"`
	Serializable      bool   `json:"serializable,omitempty"`
	KeysOnly          bool   `json:"keys_only,omitempty"`
	CountOnly         bool   `json:"count_only,omitempty"`
	MinModRevision    int64  `json:"min_mod_revision,omitempty,string"`
	MaxModRevision    int64  `json:"max_mod_revision,omitempty,string"`
	MaxCreateRevision int64  `json:"max_create_revision,omitempty,string"`
}

type putRequest struct {
	Key    []byte `json:"key"`
	Value  []byte `json:"value"`
	Lease  int64  `json:"lease,omitempty,string"`
	PrevKv bool   `json:"prev_kv,omitempty"`
}

type deleteRequest struct {
	Key      []byte `json:"key"`
	RangeEnd []byte `json:"range_end,omitempty"`
	PrevKv   bool   `json:"prev_kv,omitempty"`
}

type requestOp struct {
	RequestRange       *rangeRequest  `json:"request_range,omitempty"`
	RequestPut         *putRequest    `json:"request_put,omitempty"`
	RequestDeleteRange *deleteRequest `json:"request_delete_range,omitempty"`
}

// nsKey and nsEnd put a key and a range end under namespace ns.
func nsKey(ns string, k []byte) []byte {
	if ns == "" {
		return k
	}
	return append([]byte(ns), k...)
}

func nsEnd(ns string, end []byte) []byte {
	switch {
	case ns == "" || end == nil:
		return end
	case len(end) == 1 && end[0] == 0:
		// To the end of the keyspace: the end of the namespace.
		return prefixEnd([]byte(ns))
	}
	return append([]byte(ns), end...)
}

// strip takes namespace ns off the keys of kvs.
func strip(ns string, kvs ...*KeyValue) {
	if ns == "" {
		return
	}
	for _, kv := range kvs {
		if kv != nil {
			kv.Key = kv.Key[min(len(ns), len(kv.Key)):]
		}
	}
}

func (r *GetResponse) strip(ns string)    { strip(ns, r.Kvs...) }
func (r *PutResponse) strip(ns string)    { strip(ns, r.PrevKv) }
func (r *DeleteResponse) strip(ns string) { strip(ns, r.PrevKvs...) }

func (r *TxnResponse) strip(ns string) {
	for _, o := range r.Responses {
		switch {
		case o.ResponseRange != nil:
			o.ResponseRange.strip(ns)
		case o.ResponsePut != nil:
			o.ResponsePut.strip(ns)
		case o.ResponseDeleteRange != nil:
			o.ResponseDeleteRange.strip(ns)
		case o.ResponseTxn != nil:
			o.ResponseTxn.strip(ns)
		}
	}
}

func (op *Op) rangeReq(ns string) *rangeRequest {
	return &rangeRequest{
		Key: nsKey(ns, op.key), RangeEnd: nsEnd(ns, op.end), Limit: op.limit, Revision: op.rev,
		SortOrder: int(op.sortOrder), SortTarget: int(op.sortTarget),
		Serializable: op.serializable, KeysOnly: op.keysOnly, CountOnly: op.countOnly,
		MinModRevision: op.minModRev, MaxModRevision: op.maxModRev,
		MaxCreateRevision: op.maxCreateRev,
	}
}

func (op *Op) putReq(ns string) *putRequest {
	return &putRequest{Key: nsKey(ns, op.key), Value: op.val, Lease: int64(op.lease), PrevKv: op.prevKV}
}

func (op *Op) deleteReq(ns string) *deleteRequest {
	return &deleteRequest{Key: nsKey(ns, op.key), RangeEnd: nsEnd(ns, op.end), PrevKv: op.prevKV}
}

func (op *Op) request(ns string) requestOp {
	switch op.t {
	case tRange:
		return requestOp{RequestRange: op.rangeReq(ns)}
	case tPut:
		return requestOp{RequestPut: op.putReq(ns)}
	default:
		return requestOp{RequestDeleteRange: op.deleteReq(ns)}
	}
}

// Get reads key (a range, with WithPrefix or WithFromKey). It is retried on
// another member if its connection breaks.
func (c *Client) Get(ctx context.Context, key string, opts ...OpOption) (*GetResponse, error) {
	op := OpGet(key, opts...)
	var res GetResponse
	if err := c.do(ctx, "/v3/kv/range", op.rangeReq(c.ns), &res, true); err != nil {
		return nil, err
	}
	fill(&res.Header)
	res.strip(c.ns)
	return &res, nil
}

// Put writes key.
func (c *Client) Put(ctx context.Context, key, val string, opts ...OpOption) (*PutResponse, error) {
	op := OpPut(key, val, opts...)
	var res PutResponse
	if err := c.do(ctx, "/v3/kv/put", op.putReq(c.ns), &res, false); err != nil {
		return nil, err
	}
	fill(&res.Header)
	res.strip(c.ns)
	return &res, nil
}

// Delete removes key (a range, with WithPrefix or WithFromKey).
func (c *Client) Delete(ctx context.Context, key string, opts ...OpOption) (*DeleteResponse, error) {
	op := OpDelete(key, opts...)
	var res DeleteResponse
	if err := c.do(ctx, "/v3/kv/deleterange", op.deleteReq(c.ns), &res, false); err != nil {
		return nil, err
	}
	fill(&res.Header)
	res.strip(c.ns)
	return &res, nil
}

// fill gives an answer a header when etcd sent none, so callers can read
// Header.Revision without a nil check, as with clientv3.
func fill(h **ResponseHeader) {
	if *h == nil {
		*h = &ResponseHeader{}
	}
}

// Cmp is one comparison of a transaction.
type Cmp struct {
	Result         int    `json:"result,omitempty"`
	Target         int    `json:"target,omitempty"`
	Key            []byte `json:"key"`
	Version        *int64 `json:"version,omitempty,string"`
	CreateRevision *int64 `json:"create_revision,omitempty,string"`
	ModRevision    *int64 `json:"mod_revision,omitempty,string"`
	Value          []byte `json:"value,omitempty"`
	Lease          *int64 `json:"lease,omitempty,string"`
}

// Comparison targets, as etcd numbers them.
const (
	cmpVersion = iota
	cmpCreate
	cmpMod
	cmpValue
	cmpLease
)

// Value, Version, CreateRevision, ModRevision and LeaseValue start a
// comparison on key, for Compare.
func Value(key string) Cmp          { return Cmp{Key: []byte(key), Target: cmpValue} }
func Version(key string) Cmp        { return Cmp{Key: []byte(key), Target: cmpVersion} }
func CreateRevision(key string) Cmp { return Cmp{Key: []byte(key), Target: cmpCreate} }
func ModRevision(key string) Cmp    { return Cmp{Key: []byte(key), Target: cmpMod} }
func LeaseValue(key string) Cmp     { return Cmp{Key: []byte(key), Target: cmpLease} }

// Compare completes cmp: result is "=", "!=", ">" or "<"; v is a string
// for Value, an integer (or LeaseID) for the others.
func Compare(cmp Cmp, result string, v any) Cmp {
	switch result {
	case "=":
		cmp.Result = 0
	case ">":
		cmp.Result = 1
	case "<":
		cmp.Result = 2
	case "!=":
		cmp.Result = 3
	default:
		panic("etcdkv: unknown comparison " + result)
	}
	if cmp.Target == cmpValue {
		switch v := v.(type) {
		case string:
			cmp.Value = []byte(v)
		case []byte:
			cmp.Value = v
		default:
			panic(fmt.Sprintf("etcdkv: compare a value with %T", v))
		}
		if cmp.Value == nil {
			cmp.Value = []byte{}
		}
		return cmp
	}
	var n int64
	switch v := v.(type) {
	case int:
		n = int64(v)
	case int64:
		n = v
	case LeaseID:
		n = int64(v)
	default:
		panic(fmt.Sprintf("etcdkv: compare a revision or version with %T", v))
	}
	switch cmp.Target {
	case cmpVersion:
		cmp.Version = &n
	case cmpCreate:
		cmp.CreateRevision = &n
	case cmpMod:
		cmp.ModRevision = &n
	case cmpLease:
		cmp.Lease = &n
	}
	return cmp
}

// Txn is a transaction being built: If(...).Then(...).Else(...).Commit().
type Txn struct {
	c    *Client
	ctx  context.Context
	cmps []Cmp
	then []Op
	els  []Op
}

// Txn starts a transaction.
func (c *Client) Txn(ctx context.Context) *Txn { return &Txn{c: c, ctx: ctx} }

// If adds comparisons; all must hold for Then's operations to run.
func (t *Txn) If(cs ...Cmp) *Txn { t.cmps = append(t.cmps, cs...); return t }

// Then adds the operations run when the comparisons hold.
func (t *Txn) Then(ops ...Op) *Txn { t.then = append(t.then, ops...); return t }

// Else adds the operations run when they do not.
func (t *Txn) Else(ops ...Op) *Txn { t.els = append(t.els, ops...); return t }

// Commit sends the transaction. A transaction of reads only is retried
// on another member if its connection breaks.
func (t *Txn) Commit() (*TxnResponse, error) {
	req := struct {
		Compare []Cmp       `json:"compare"`
		Success []requestOp `json:"success"`
		Failure []requestOp `json:"failure"`
	}{Compare: []Cmp{}}
	for _, c := range t.cmps {
		c.Key = nsKey(t.c.ns, c.Key)
		req.Compare = append(req.Compare, c)
	}
	readOnly := true
	for i := range t.then {
		req.Success = append(req.Success, t.then[i].request(t.c.ns))
		readOnly = readOnly && t.then[i].t == tRange
	}
	for i := range t.els {
		req.Failure = append(req.Failure, t.els[i].request(t.c.ns))
		readOnly = readOnly && t.els[i].t == tRange
	}
	var res TxnResponse
	if err := t.c.do(t.ctx, "/v3/kv/txn", req, &res, readOnly); err != nil {
		return nil, err
	}
	fill(&res.Header)
	res.strip(t.c.ns)
	for _, r := range res.Responses {
		// An empty range answer comes as {"response_range": {"header":
		// ...}}; keep headers filled in nested answers too.
		if r.ResponseRange != nil {
			fill(&r.ResponseRange.Header)
		}
		if r.ResponsePut != nil {
			fill(&r.ResponsePut.Header)
		}
		if r.ResponseDeleteRange != nil {
			fill(&r.ResponseDeleteRange.Header)
		}
	}
	return &res, nil
}
