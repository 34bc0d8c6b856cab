//! Where a webhook may point (no SSRF): an `https` URL whose host resolves only to public
//! addresses. Checked when an endpoint is created and again at every delivery, on the
//! addresses actually connected to (DNS can change between the two, or on purpose between
//! a check and a connect), by resolving through [`PublicOnlyResolver`]. Redirects are not
//! followed. `--webhook-allow-private` lifts both rules (plain `http` included) for tests
//! and private networks.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::LazyLock;

use ipnet::{IpNet, Ipv6Net};

/// Ranges a webhook may not reach: loopback, private, shared (CGNAT), link-local (with the
/// cloud metadata address 169.254.169.254), unique-local, multicast, reserved, and the
/// documentation and benchmarking ranges.
static BLOCKED: LazyLock<Vec<IpNet>> = LazyLock::new(|| {
    [
        "0.0.0.0/8",
        "10.0.0.0/8",
        "100.64.0.0/10",
        "127.0.0.0/8",
        "169.254.0.0/16",
        "172.16.0.0/12",
        "192.0.0.0/24",
        "192.0.2.0/24",
        "192.88.99.0/24",
        "192.168.0.0/16",
        "198.18.0.0/15",
        "198.51.100.0/24",
        "203.0.113.0/24",
        "224.0.0.0/4",
        "240.0.0.0/4",
        "::/128",
        "::1/128",
        "100::/64",
        // IETF protocol assignments, Teredo (2001::/32) among them: a tunnel to any
        // IPv4 address.
        "2001::/23",
        "2001:db8::/32",
        // 6to4: another IPv4 address inside an IPv6 one.
        "2002::/16",
        // NAT64 for local use (the well-known prefix is decoded below).
        "64:ff9b:1::/48",
        // Site-local (deprecated, still routed inside some networks).
        "fec0::/10",
        "fc00::/7",
        "fe80::/10",
        "ff00::/8",
    ]
    .iter()
    .filter_map(|net| net.parse().ok())
    .collect()
});

/// Addresses some clouds serve metadata on outside the ranges above.
const METADATA: [IpAddr; 3] = [
    // Alibaba Cloud.
    IpAddr::V4(Ipv4Addr::new(100, 100, 100, 200)),
    // Azure's wire server (platform agent, DNS).
    IpAddr::V4(Ipv4Addr::new(168, 63, 129, 16)),
    // AWS over IPv6 (inside fc00::/7 already; named for the reader).
    IpAddr::V6(Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254)),
];

/// Whether a webhook may connect to `address`. An IPv4 address written as IPv6 (mapped,
/// compatible, or NAT64) is judged as the IPv4 address it reaches.
pub fn is_public(address: IpAddr) -> bool {
    let address = match address {
        IpAddr::V6(v6) => embedded_v4(v6).map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    };
    !METADATA.contains(&address) && !BLOCKED.iter().any(|net| net.contains(&address))
}

fn embedded_v4(address: Ipv6Addr) -> Option<Ipv4Addr> {
    if let Some(v4) = address.to_ipv4_mapped() {
        return Some(v4);
    }
    let segments = address.segments();
    let [a, b, c, d] = address.octets()[12..] else {
        return None;
    };
    let nat64: Ipv6Net = "64:ff9b::/96".parse().ok()?;
    let compatible = segments[..6].iter().all(|segment| *segment == 0);
    (nat64.contains(&address) || compatible).then(|| Ipv4Addr::new(a, b, c, d))
}

/// Why a URL may not be a webhook, in words for the API's 422.
pub fn check_scheme(url: &url::Url, allow_private: bool) -> Result<(), String> {
    match url.scheme() {
        "https" => Ok(()),
        "http" if allow_private => Ok(()),
        _ => Err("must be an https:// URL".into()),
    }
}

/// Resolves `url`'s host and refuses it unless every address is public (or
/// `allow_private`). At creation; deliveries check again as they connect.
pub async fn check_url(raw: &str, allow_private: bool) -> Result<(), String> {
    let url = url::Url::parse(raw).map_err(|_| "must be an absolute https:// URL".to_owned())?;
    check_scheme(&url, allow_private)?;
    if allow_private {
        return Ok(());
    }
    let host = url.host().ok_or("must name a host")?;
    let port = url.port_or_known_default().unwrap_or(443);
    let addresses: Vec<SocketAddr> = match host {
        url::Host::Ipv4(v4) => vec![SocketAddr::new(IpAddr::V4(v4), port)],
        url::Host::Ipv6(v6) => vec![SocketAddr::new(IpAddr::V6(v6), port)],
        url::Host::Domain(name) => tokio::net::lookup_host((name, port))
            .await
            .map_err(|_| format!("the host {name} does not resolve"))?
            .collect(),
    };
    if addresses.is_empty() {
        return Err("the host does not resolve".into());
    }
    match addresses.iter().find(|address| !is_public(address.ip())) {
        Some(address) => Err(format!(
            "resolves to {}, a loopback, private, link-local or metadata address",
            address.ip()
        )),
        None => Ok(()),
    }
}

/// reqwest's DNS hook for deliveries: resolves with the system resolver and fails the
/// connection when any address is not public, so a name that changed to a private address
/// after the endpoint was created is refused at the moment of connecting.
pub struct PublicOnlyResolver;

impl reqwest::dns::Resolve for PublicOnlyResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let addresses: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            if let Some(address) = addresses.iter().find(|address| !is_public(address.ip())) {
                return Err(format!(
                    "{host} resolves to {}, which webhooks may not reach",
                    address.ip()
                )
                .into());
            }
            let addresses: reqwest::dns::Addrs = Box::new(addresses.into_iter());
            Ok(addresses)
        })
    }
}

/// For a URL whose host is an address (no DNS): whether a delivery may connect to it.
pub fn literal_host_allowed(url: &url::Url) -> bool {
    match url.host() {
        Some(url::Host::Ipv4(v4)) => is_public(IpAddr::V4(v4)),
        Some(url::Host::Ipv6(v6)) => is_public(IpAddr::V6(v6)),
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn public(text: &str) -> bool {
        is_public(text.parse().unwrap())
    }

    #[test]
    fn only_public_addresses_are_reachable() {
        for blocked in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "100.100.100.200",
            "0.0.0.0",
            "224.0.0.1",
            "255.255.255.255",
            "::1",
            "::",
            "fe80::1",
            "fd00:ec2::254",
            "fc00::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "64:ff9b::a9fe:a9fe",
            "::127.0.0.1",
            "168.63.129.16",
            "2002:a9fe:a9fe::1",
            "2001:0:4136:e378:8000:63bf:3fff:fdd2",
            "64:ff9b:1::a00:1",
            "fec0::1",
        ] {
            assert!(!public(blocked), "{blocked}");
        }
        for allowed in [
            "93.184.216.34",
            "8.8.8.8",
            "172.32.0.1",
            "2606:4700::1111",
            "::ffff:8.8.8.8",
        ] {
            assert!(public(allowed), "{allowed}");
        }
    }

    #[tokio::test]
    async fn urls_must_be_https_to_public_hosts_unless_private_is_allowed() {
        assert!(check_url("http://93.184.216.34/hook", false).await.is_err());
        assert!(check_url("https://93.184.216.34/hook", false).await.is_ok());
        assert!(check_url("https://127.0.0.1/hook", false).await.is_err());
        assert!(check_url("https://[::1]:8443/hook", false).await.is_err());
        assert!(
            check_url("https://169.254.169.254/latest/meta-data", false)
                .await
                .is_err()
        );
        assert!(check_url("https://localhost/hook", false).await.is_err());
        assert!(check_url("http://127.0.0.1:9/hook", true).await.is_ok());
        assert!(check_url("ftp://127.0.0.1/hook", true).await.is_err());
    }
}
