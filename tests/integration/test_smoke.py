import dns.message
import dns.query
import dns.rcode
import dns.rdatatype


def test_app_a_over_udp_and_tcp(example_node):
    q = dns.message.make_query("app.gslb.example.com", "A")
    for send in (dns.query.udp, dns.query.tcp):
        r = send(q, example_node.host, port=example_node.port, timeout=2)
        assert r.rcode() == dns.rcode.NOERROR
        addrs = sorted(rd.address for rrset in r.answer for rd in rrset)
        assert addrs == ["192.0.2.10", "192.0.2.20", "192.0.2.30"]


def test_ipv6_listener(example_node):
    host, port = example_node.addresses[1]
    r = dns.query.udp(dns.message.make_query("app.gslb.example.com", "AAAA"), host, port=port, timeout=2)
    assert sorted(rd.address for rrset in r.answer for rd in rrset) == [
        "2001:db8:10::10", "2001:db8:20::20", "2001:db8:30::30"]
