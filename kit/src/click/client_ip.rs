//! The client's address: the TCP peer, or, when the peer is a proxy we were told to trust,
//! the nearest `X-Forwarded-For` hop that is not one of our proxies.
//!
//! Proxies *append* the peer they saw to whatever `X-Forwarded-For` the client sent, so
//! only the entries on the right, written by proxies we trust, can be believed; the leftmost
//! one is whatever the client chose. The header's lines are read as one list in order, and
//! its entries from right to left:
//!
//! * an entry inside `--trusted-proxies` is one of our proxies: skip it;
//! * the first entry that is not is the client;
//! * when every entry is trusted, the leftmost one is the client;
//! * an entry that is not an address (`1.2.3.4:5678` and `[2001:db8::1]:443` are, without
//!   their port) ends the walk: the client is the last trusted hop seen, the nearest address
//!   we can believe (counted in `referral_unparsable_forwarded_for_total`).
//!
//! Untrusted peers cannot spoof their address that way: their header is ignored. Every
//! proxy hop in front of the service must be listed in `--trusted-proxies` (for example the
//! load balancer's range and the ingress pods), or the client is the unlisted proxy.

use std::net::{IpAddr, SocketAddr};

use http::HeaderMap;
use ipnet::IpNet;

/// Proxies (addresses or CIDR ranges) whose `X-Forwarded-For` is believed.
#[derive(Clone, Debug, Default)]
pub struct TrustedProxies(Vec<IpNet>);

impl TrustedProxies {
    /// Parses `10.0.0.0/8,192.168.1.7,::1`.
    pub fn parse(list: &str) -> Result<Self, String> {
        list.split(',')
            .map(str::trim)
            .filter(|entry| !entry.is_empty())
            .map(|entry| {
                entry
                    .parse::<IpNet>()
                    .or_else(|_| entry.parse::<IpAddr>().map(IpNet::from))
                    .map_err(|_| format!("{entry:?} is not an IP address or CIDR range"))
            })
            .collect::<Result<_, _>>()
            .map(Self)
    }

    /// Whether `address` is one of our proxies.
    pub fn contains(&self, address: IpAddr) -> bool {
        self.trusts(address.to_canonical())
    }

    /// Whether `address` (canonical: IPv4-mapped IPv6 is IPv4) is one of our proxies.
    fn trusts(&self, address: IpAddr) -> bool {
        self.0.iter().any(|net| net.contains(&address))
    }

    /// The client address for a request from `peer` (see the module docs).
    pub fn client_ip(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        let peer = peer.to_canonical();
        if !self.trusts(peer) {
            if headers.contains_key(X_FORWARDED_FOR) {
                untrusted_forwarded_for(peer);
            }
            return peer;
        }
        // The nearest hop we believe so far: the peer, then each trusted entry.
        let mut nearest = peer;
        // Lines from last to first, and each line's entries from right to left: the joined
        // list read from right to left, without joining it.
        for line in headers.get_all(X_FORWARDED_FOR).iter().rev() {
            for entry in line.as_bytes().rsplit(|&byte| byte == b',') {
                let Some(hop) = parse_hop(entry) else {
                    metrics::counter!("referral_unparsable_forwarded_for_total").increment(1);
                    return nearest;
                };
                if !self.trusts(hop) {
                    return hop;
                }
                nearest = hop;
            }
        }
        nearest
    }
}

const X_FORWARDED_FOR: &str = "x-forwarded-for";

/// One `X-Forwarded-For` entry as a canonical address: `1.2.3.4`, `2001:db8::1`, or either
/// with a port (`1.2.3.4:5678`, `[2001:db8::1]:443`), or a bracketed IPv6 address.
fn parse_hop(entry: &[u8]) -> Option<IpAddr> {
    let text = std::str::from_utf8(entry).ok()?.trim_matches([' ', '\t']);
    let ip = match text.parse::<IpAddr>() {
        Ok(ip) => ip,
        Err(_) => match text.parse::<SocketAddr>() {
            Ok(address) => address.ip(),
            Err(_) => text
                .strip_prefix('[')?
                .strip_suffix(']')?
                .parse::<std::net::Ipv6Addr>()
                .ok()
                .map(IpAddr::V6)?,
        },
    };
    Some(ip.to_canonical())
}

/// A proxy the edge was not told about sends `X-Forwarded-For`: likely a missing
/// `--trusted-proxies`, and then every click seems to come from the proxy and the per-IP
/// limit throttles them all as one visitor. Counted, and said once per process (a client
/// sending the header on its own would otherwise flood the log).
fn untrusted_forwarded_for(peer: IpAddr) {
    static WARNED: std::sync::Once = std::sync::Once::new();
    metrics::counter!("referral_untrusted_forwarded_for_total").increment(1);
    WARNED.call_once(|| {
        tracing::warn!(
            %peer,
            "a request carried X-Forwarded-For from a peer not in --trusted-proxies: its client \
             address is the peer's. Behind a proxy, set --trusted-proxies \
             (REFERRAL_TRUSTED_PROXIES) to the proxy's addresses, or every click counts \
             against one per-IP limit. Further ones are counted in \
             referral_untrusted_forwarded_for_total, not logged"
        );
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(forwarded: &str) -> HeaderMap {
        lines(&[forwarded])
    }

    /// One `X-Forwarded-For` header line per entry of `forwarded`, in order.
    fn lines(forwarded: &[&str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for line in forwarded {
            headers.append("x-forwarded-for", line.parse().unwrap());
        }
        headers
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    /// Our load balancer (10.0.0.0/8) in front of an ingress (192.168.1.7).
    fn proxies() -> TrustedProxies {
        TrustedProxies::parse("10.0.0.0/8, 192.168.1.7").unwrap()
    }

    const INGRESS: &str = "192.168.1.7";

    #[test]
    fn believes_forwarded_for_only_from_trusted_proxies() {
        let forwarded = headers("185.12.34.56, 10.1.1.1");
        let stranger = ip("203.0.113.9");
        assert_eq!(
            proxies().client_ip(ip(INGRESS), &forwarded),
            ip("185.12.34.56")
        );
        assert_eq!(proxies().client_ip(stranger, &forwarded), stranger);
        assert_eq!(
            proxies().client_ip(ip("::ffff:203.0.113.9"), &forwarded),
            stranger,
            "an IPv4-mapped peer is its IPv4 address"
        );
        assert_eq!(
            proxies().client_ip(ip(INGRESS), &HeaderMap::new()),
            ip(INGRESS)
        );
    }

    #[test]
    fn the_client_is_the_nearest_untrusted_hop() {
        // The load balancer appended the client it saw (198.51.100.77) to what the client
        // sent; the ingress appended the load balancer.
        assert_eq!(
            proxies().client_ip(ip(INGRESS), &headers("198.51.100.77, 10.1.1.1")),
            ip("198.51.100.77")
        );
        assert_eq!(
            proxies().client_ip(
                ip(INGRESS),
                &headers("192.0.2.1, 198.51.100.77, 10.2.2.2, 10.1.1.1")
            ),
            ip("198.51.100.77"),
            "entries left of the client are the client's own claims"
        );
        assert_eq!(
            proxies().client_ip(ip("10.9.9.9"), &headers(" 2001:db8::7 ,10.1.1.1 ")),
            ip("2001:db8::7")
        );
    }

    #[test]
    fn a_client_supplied_leftmost_hop_changes_nothing() {
        let honest = headers("198.51.100.77, 10.1.1.1");
        let expected = proxies().client_ip(ip(INGRESS), &honest);
        for claim in [
            "203.0.113.200",
            "10.0.0.1",
            "192.168.1.7",
            "garbage",
            "",
            "2001:db8::1, 203.0.113.5",
        ] {
            let spoofed = headers(&format!("{claim}, 198.51.100.77, 10.1.1.1"));
            assert_eq!(
                proxies().client_ip(ip(INGRESS), &spoofed),
                expected,
                "{claim:?}"
            );
            // The same claim as a header line of its own, before the proxies' line.
            let spoofed = lines(&[claim, "198.51.100.77, 10.1.1.1"]);
            assert_eq!(
                proxies().client_ip(ip(INGRESS), &spoofed),
                expected,
                "{claim:?} on its own line"
            );
        }
    }

    #[test]
    fn header_lines_are_one_list_in_order() {
        assert_eq!(
            proxies().client_ip(
                ip(INGRESS),
                &lines(&["192.0.2.1, 198.51.100.77", "10.1.1.1"])
            ),
            ip("198.51.100.77")
        );
        assert_eq!(
            proxies().client_ip(
                ip(INGRESS),
                &lines(&["198.51.100.77", "10.1.1.1", "10.2.2.2"])
            ),
            ip("198.51.100.77")
        );
    }

    #[test]
    fn when_every_hop_is_trusted_the_leftmost_is_the_client() {
        assert_eq!(
            proxies().client_ip(ip(INGRESS), &headers("10.3.3.3, 10.2.2.2, 10.1.1.1")),
            ip("10.3.3.3")
        );
        assert_eq!(
            proxies().client_ip(ip(INGRESS), &lines(&["10.3.3.3", "10.2.2.2, 10.1.1.1"])),
            ip("10.3.3.3")
        );
    }

    #[test]
    fn an_unparsable_hop_stops_at_the_last_trusted_one() {
        assert_eq!(
            proxies().client_ip(ip(INGRESS), &headers("garbage")),
            ip(INGRESS),
            "nothing believable past the peer"
        );
        assert_eq!(
            proxies().client_ip(ip(INGRESS), &headers("198.51.100.77, garbage, 10.1.1.1")),
            ip("10.1.1.1")
        );
        assert_eq!(
            proxies().client_ip(ip(INGRESS), &headers("198.51.100.77, , 10.1.1.1")),
            ip("10.1.1.1"),
            "an empty entry is not an address"
        );
        assert_eq!(
            proxies().client_ip(ip(INGRESS), &lines(&["198.51.100.77", "", "10.1.1.1"])),
            ip("10.1.1.1"),
            "an empty line is not an address"
        );
        assert_eq!(
            proxies().client_ip(ip(INGRESS), &headers("198.51.100.77, fe80::1%eth0")),
            ip(INGRESS)
        );
        let mut not_text = HeaderMap::new();
        not_text.append(
            "x-forwarded-for",
            http::HeaderValue::from_bytes(b"198.51.100.77, \xff, 10.1.1.1").unwrap(),
        );
        assert_eq!(proxies().client_ip(ip(INGRESS), &not_text), ip("10.1.1.1"));
    }

    #[test]
    fn hops_may_carry_a_port() {
        for (entry, client) in [
            ("198.51.100.77:5678", "198.51.100.77"),
            ("[2001:db8::7]:443", "2001:db8::7"),
            ("[2001:db8::7]", "2001:db8::7"),
            ("::ffff:198.51.100.77", "198.51.100.77"),
        ] {
            assert_eq!(
                proxies().client_ip(ip(INGRESS), &headers(&format!("{entry}, 10.1.1.1"))),
                ip(client),
                "{entry}"
            );
        }
        assert_eq!(
            proxies().client_ip(ip(INGRESS), &headers("198.51.100.77, 10.1.1.1:9000")),
            ip("198.51.100.77"),
            "a trusted hop with a port is still trusted"
        );
    }

    #[test]
    fn refuses_bad_entries() {
        assert!(TrustedProxies::parse("10.0.0.0/33").is_err());
        assert!(TrustedProxies::parse("proxy.local").is_err());
        assert!(TrustedProxies::parse("").unwrap().0.is_empty());
    }
}
