//! The client's address: the TCP peer, or the first `X-Forwarded-For` hop when the peer is
//! a proxy we were told to trust. Untrusted peers cannot spoof their address that way.

use std::net::IpAddr;

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

    fn trusts(&self, peer: IpAddr) -> bool {
        let peer = peer.to_canonical();
        self.0.iter().any(|net| net.contains(&peer))
    }

    /// The client address for a request from `peer`.
    pub fn client_ip(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        if !self.trusts(peer) {
            if headers.contains_key(X_FORWARDED_FOR) {
                untrusted_forwarded_for(peer);
            }
            return peer.to_canonical();
        }
        headers
            .get(X_FORWARDED_FOR)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.split(',').next())
            .and_then(|first| first.trim().parse::<IpAddr>().ok())
            .map_or(peer.to_canonical(), |ip| ip.to_canonical())
    }
}

const X_FORWARDED_FOR: &str = "x-forwarded-for";

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
        let mut headers = HeaderMap::new();
        headers.insert("x-forwarded-for", forwarded.parse().unwrap());
        headers
    }

    #[test]
    fn believes_forwarded_for_only_from_trusted_proxies() {
        let proxies = TrustedProxies::parse("10.0.0.0/8, 192.168.1.7").unwrap();
        let forwarded = headers("185.12.34.56, 10.1.1.1");
        let proxy: IpAddr = "10.2.3.4".parse().unwrap();
        let stranger: IpAddr = "203.0.113.9".parse().unwrap();
        assert_eq!(
            proxies.client_ip(proxy, &forwarded).to_string(),
            "185.12.34.56"
        );
        assert_eq!(proxies.client_ip(stranger, &forwarded), stranger);
        assert_eq!(proxies.client_ip(proxy, &headers("garbage")), proxy);
        assert_eq!(proxies.client_ip(proxy, &HeaderMap::new()), proxy);
    }

    #[test]
    fn refuses_bad_entries() {
        assert!(TrustedProxies::parse("10.0.0.0/33").is_err());
        assert!(TrustedProxies::parse("proxy.local").is_err());
        assert!(TrustedProxies::parse("").unwrap().0.is_empty());
    }
}
