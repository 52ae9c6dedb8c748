package discoverd

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/miekg/dns"

	"github.com/flynnrebuilt/flynn/api"
)

// Zone is the DNS zone discoverd answers for.
const Zone = "discoverd."

// dnsTTL is the TTL of discoverd's answers: short, instances come and go.
const dnsTTL = 5

// DNS answers queries for the .discoverd zone from the registry and passes
// other names to the recursors:
//
//	<svc>.discoverd            A/AAAA of every instance (deduplicated)
//	leader.<svc>.discoverd     A/AAAA of the service leader
//	_<svc>._tcp.discoverd      SRV of every tcp instance (also _udp)
//	<id>._i.<svc>.discoverd    A/AAAA of one instance
type DNS struct {
	store     *Store
	recursors []string
	log       *slog.Logger
}

// NewDNS returns a DNS server on store. recursors are host:port addresses
// of the resolvers for names outside the zone; none means such queries get
// SERVFAIL.
func NewDNS(store *Store, recursors []string, log *slog.Logger) *DNS {
	return &DNS{store: store, recursors: recursors, log: log}
}

// Recursors reads the name servers of a resolv.conf file, leaving out
// skip (discoverd's own address, to avoid loops).
func Recursors(resolvConf string, skip ...string) []string {
	cc, err := dns.ClientConfigFromFile(resolvConf)
	if err != nil {
		return nil
	}
	var out []string
	for _, s := range cc.Servers {
		addr := net.JoinHostPort(s, cc.Port)
		if !containsStr(skip, addr) {
			out = append(out, addr)
		}
	}
	return out
}

func containsStr(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// Serve answers DNS on pc (UDP) and ln (TCP; may be nil) until ctx is done.
func (d *DNS) Serve(ctx context.Context, pc net.PacketConn, ln net.Listener) error {
	var servers []*dns.Server
	if pc != nil {
		servers = append(servers, &dns.Server{PacketConn: pc, Handler: d})
	}
	if ln != nil {
		servers = append(servers, &dns.Server{Listener: ln, Handler: d})
	}
	errc := make(chan error, len(servers))
	var wg sync.WaitGroup
	for _, s := range servers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errc <- s.ActivateAndServe()
		}()
	}
	var err error
	select {
	case <-ctx.Done():
	case err = <-errc:
	}
	for _, s := range servers {
		s.Shutdown()
	}
	wg.Wait()
	return err
}

// ListenAndServe binds addr over UDP and TCP and serves until ctx is done.
func (d *DNS) ListenAndServe(ctx context.Context, addr string) error {
	pc, err := net.ListenPacket("udp", addr)
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		pc.Close()
		return err
	}
	return d.Serve(ctx, pc, ln)
}

// ServeDNS answers one query.
func (d *DNS) ServeDNS(w dns.ResponseWriter, req *dns.Msg) {
	if len(req.Question) != 1 {
		m := new(dns.Msg)
		m.SetRcode(req, dns.RcodeFormatError)
		w.WriteMsg(m)
		return
	}
	q := req.Question[0]
	name := strings.ToLower(q.Name)
	if !dns.IsSubDomain(Zone, name) {
		d.recurse(w, req)
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	m := d.answer(ctx, req, q, name)
	if len(m.Answer) == 0 && m.Rcode != dns.RcodeServerFailure {
		m.Ns = []dns.RR{d.soa()}
	}
	w.WriteMsg(m)
}

func (d *DNS) answer(ctx context.Context, req *dns.Msg, q dns.Question, name string) *dns.Msg {
	m := new(dns.Msg)
	m.SetReply(req)
	m.Authoritative = true
	labels := dns.SplitDomainName(strings.TrimSuffix(name, Zone))
	if name == Zone {
		if q.Qtype == dns.TypeSOA {
			m.Answer = []dns.RR{d.soa()}
		}
		return m
	}
	var (
		svc    string
		pick   func([]*api.Instance) []*api.Instance
		srv    bool
		proto  string
		target string // instance id for <id>._i.<svc>
	)
	switch {
	case len(labels) == 1:
		svc = labels[0]
		pick = func(in []*api.Instance) []*api.Instance { return in }
	case len(labels) == 2 && labels[0] == "leader":
		svc = labels[1]
		pick = func(in []*api.Instance) []*api.Instance { return in[:min(1, len(in))] }
	case len(labels) == 2 && strings.HasPrefix(labels[0], "_") && (labels[1] == "_tcp" || labels[1] == "_udp"):
		svc, srv, proto = labels[0][1:], true, labels[1][1:]
		pick = func(in []*api.Instance) []*api.Instance { return in }
	case len(labels) == 3 && labels[1] == "_i":
		svc, target = labels[2], labels[0]
		pick = func(in []*api.Instance) []*api.Instance {
			for _, inst := range in {
				if inst.ID == target {
					return []*api.Instance{inst}
				}
			}
			return nil
		}
	default:
		m.Rcode = dns.RcodeNameError
		return m
	}
	insts, _, err := d.store.instances(ctx, svc, true)
	if err != nil {
		if errors.Is(err, api.ErrNotFound) || errors.Is(err, api.ErrValidation) {
			m.Rcode = dns.RcodeNameError
		} else {
			d.log.Warn("dns lookup failed", "name", name, "err", err)
			m.Rcode = dns.RcodeServerFailure
		}
		return m
	}
	insts = pick(insts)
	if target != "" && len(insts) == 0 {
		m.Rcode = dns.RcodeNameError
		return m
	}
	if srv {
		if q.Qtype != dns.TypeSRV && q.Qtype != dns.TypeANY {
			return m
		}
		for _, inst := range insts {
			if inst.Proto != proto {
				continue
			}
			host, port, _ := net.SplitHostPort(inst.Addr)
			p, _ := strconv.Atoi(port)
			tname := inst.ID + "._i." + svc + "." + Zone
			m.Answer = append(m.Answer, &dns.SRV{
				Hdr:      dns.RR_Header{Name: q.Name, Rrtype: dns.TypeSRV, Class: dns.ClassINET, Ttl: dnsTTL},
				Priority: 0, Weight: 0, Port: uint16(p), Target: tname,
			})
			if rr := addrRR(tname, net.ParseIP(host), dns.TypeANY); rr != nil {
				m.Extra = append(m.Extra, rr)
			}
		}
		return m
	}
	seen := map[string]bool{}
	for _, inst := range insts {
		host, _, _ := net.SplitHostPort(inst.Addr)
		if seen[host] {
			continue
		}
		seen[host] = true
		if rr := addrRR(q.Name, net.ParseIP(host), q.Qtype); rr != nil {
			m.Answer = append(m.Answer, rr)
		}
	}
	return m
}

// addrRR is an A or AAAA record for ip when qtype asks for its family
// (TypeANY asks for both); nil otherwise.
func addrRR(name string, ip net.IP, qtype uint16) dns.RR {
	if ip == nil {
		return nil
	}
	if ip4 := ip.To4(); ip4 != nil {
		if qtype != dns.TypeA && qtype != dns.TypeANY {
			return nil
		}
		return &dns.A{Hdr: dns.RR_Header{Name: name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: dnsTTL}, A: ip4}
	}
	if qtype != dns.TypeAAAA && qtype != dns.TypeANY {
		return nil
	}
	return &dns.AAAA{Hdr: dns.RR_Header{Name: name, Rrtype: dns.TypeAAAA, Class: dns.ClassINET, Ttl: dnsTTL}, AAAA: ip}
}

func (d *DNS) soa() dns.RR {
	return &dns.SOA{
		Hdr:     dns.RR_Header{Name: Zone, Rrtype: dns.TypeSOA, Class: dns.ClassINET, Ttl: dnsTTL},
		Ns:      "dns." + Zone,
		Mbox:    "hostmaster." + Zone,
		Serial:  uint32(time.Now().Unix()),
		Refresh: 60, Retry: 60, Expire: 86400, Minttl: dnsTTL,
	}
}

// recurse passes a query for another zone to the recursors in turn.
func (d *DNS) recurse(w dns.ResponseWriter, req *dns.Msg) {
	network := "udp"
	if _, ok := w.RemoteAddr().(*net.TCPAddr); ok {
		network = "tcp"
	}
	c := &dns.Client{Net: network, Timeout: 2 * time.Second}
	for _, r := range d.recursors {
		res, _, err := c.Exchange(req, r)
		if err == nil {
			res.Id = req.Id
			w.WriteMsg(res)
			return
		}
	}
	m := new(dns.Msg)
	m.SetRcode(req, dns.RcodeServerFailure)
	w.WriteMsg(m)
}
