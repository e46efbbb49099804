//! The webhook address guard: a subscriber URL must be `https` (plain `http` only where the
//! operator allows it) and its host must neither be nor resolve to an address inside a private,
//! loopback, link-local or otherwise reserved range. It runs at submit and again at every
//! delivery, and a delivery connects only to the addresses it approved, so a DNS answer that
//! changes in between (rebinding) cannot redirect it.
//!
//! The URL parser normalises hosts first (`https://2130706433`, `https://0x7f.1` and
//! `https://[::ffff:127.0.0.1]` are all loopback), then every address is checked.

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use reqwest::Url;

/// How long name resolution may take.
pub const RESOLVE_TIMEOUT: Duration = Duration::from_secs(3);

/// Why a URL was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct GuardError(pub String);

/// Name resolution, injectable so tests can map names to chosen addresses.
pub trait Resolve: Send + Sync + 'static {
    /// The addresses of `host`.
    fn resolve<'a>(
        &'a self,
        host: &'a str,
        port: u16,
    ) -> Pin<Box<dyn Future<Output = Result<Vec<IpAddr>, String>> + Send + 'a>>;
}

/// The system resolver (`getaddrinfo` through tokio).
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemResolver;

impl Resolve for SystemResolver {
    fn resolve<'a>(
        &'a self,
        host: &'a str,
        port: u16,
    ) -> Pin<Box<dyn Future<Output = Result<Vec<IpAddr>, String>> + Send + 'a>> {
        Box::pin(async move {
            let addrs = tokio::net::lookup_host((host, port))
                .await
                .map_err(|e| e.to_string())?;
            Ok(addrs.map(|a| a.ip()).collect())
        })
    }
}

/// What the operator allows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GuardPolicy {
    /// `KILN_WEBHOOK_ALLOW_HTTP`: accept plain `http` URLs.
    pub allow_http: bool,
    /// `KILN_WEBHOOK_ALLOW_PRIVATE`: skip the address checks; for local development only.
    pub allow_private: bool,
}

/// A URL the guard let through, with the addresses a delivery may connect to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Approved {
    /// The normalised URL.
    pub url: Url,
    /// The host name, when the URL names one (IP literals need no resolution).
    pub domain: Option<String>,
    /// Every address the host resolved to, all checked.
    pub addrs: Vec<SocketAddr>,
}

/// The guard: a policy and a resolver.
#[derive(Clone)]
pub struct WebhookGuard {
    policy: GuardPolicy,
    resolver: Arc<dyn Resolve>,
    timeout: Duration,
}

impl std::fmt::Debug for WebhookGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookGuard")
            .field("policy", &self.policy)
            .finish()
    }
}

impl Default for WebhookGuard {
    fn default() -> Self {
        Self::new(GuardPolicy::default(), Arc::new(SystemResolver))
    }
}

impl WebhookGuard {
    /// A guard with this policy and resolver.
    pub fn new(policy: GuardPolicy, resolver: Arc<dyn Resolve>) -> Self {
        Self {
            policy,
            resolver,
            timeout: RESOLVE_TIMEOUT,
        }
    }

    /// The policy.
    pub fn policy(&self) -> GuardPolicy {
        self.policy
    }

    /// Parses and checks `url`, resolving its host; `Err` says why it is refused.
    pub async fn check(&self, url: &str) -> Result<Approved, GuardError> {
        let url = Url::parse(url).map_err(|e| GuardError(format!("is not a valid URL: {e}")))?;
        match url.scheme() {
            "https" => {}
            "http" if self.policy.allow_http => {}
            "http" => {
                return Err(GuardError(
                    "must use https (plain http is not allowed on this server)".into(),
                ))
            }
            other => return Err(GuardError(format!("must use https (got {other}:)"))),
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(GuardError("must not carry credentials".into()));
        }
        let port = url
            .port_or_known_default()
            .ok_or_else(|| GuardError("has no port".into()))?;
        let (domain, ips) = match url.host() {
            Some(url::Host::Ipv4(ip)) => (None, vec![IpAddr::V4(ip)]),
            Some(url::Host::Ipv6(ip)) => (None, vec![IpAddr::V6(ip)]),
            Some(url::Host::Domain(name)) => {
                let name = name.trim_end_matches('.').to_ascii_lowercase();
                if !self.policy.allow_private
                    && (name == "localhost" || name.ends_with(".localhost"))
                {
                    return Err(GuardError(
                        "must not point at this machine (localhost)".into(),
                    ));
                }
                let ips = tokio::time::timeout(self.timeout, self.resolver.resolve(&name, port))
                    .await
                    .map_err(|_| GuardError(format!("host {name} did not resolve in time")))?
                    .map_err(|e| GuardError(format!("host {name} does not resolve: {e}")))?;
                if ips.is_empty() {
                    return Err(GuardError(format!("host {name} has no addresses")));
                }
                (Some(name), ips)
            }
            None => return Err(GuardError("has no host".into())),
        };
        if !self.policy.allow_private {
            for ip in &ips {
                if let Some(why) = forbidden_reason(*ip) {
                    return Err(GuardError(match &domain {
                        Some(d) => format!("host {d} resolves to {ip}, a {why} address"),
                        None => format!("points at {ip}, a {why} address"),
                    }));
                }
            }
        }
        Ok(Approved {
            addrs: ips
                .into_iter()
                .map(|ip| SocketAddr::new(ip, port))
                .collect(),
            url,
            domain,
        })
    }
}

/// Why a webhook may not be sent to `ip`, or `None` if it is a public unicast address.
pub fn forbidden_reason(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => forbidden_v4(v4),
        IpAddr::V6(v6) => forbidden_v6(v6),
    }
}

fn in_v4(ip: Ipv4Addr, net: [u8; 4], prefix: u32) -> bool {
    let mask = if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - prefix)
    };
    (u32::from(ip) & mask) == (u32::from(Ipv4Addr::from(net)) & mask)
}

fn forbidden_v4(ip: Ipv4Addr) -> Option<&'static str> {
    const RANGES: &[([u8; 4], u32, &str)] = &[
        ([0, 0, 0, 0], 8, "unspecified (\"this network\")"),
        ([10, 0, 0, 0], 8, "private"),
        ([100, 64, 0, 0], 10, "shared (CGNAT)"),
        ([127, 0, 0, 0], 8, "loopback"),
        ([169, 254, 0, 0], 16, "link-local"),
        ([172, 16, 0, 0], 12, "private"),
        ([192, 0, 0, 0], 24, "reserved (IETF protocol)"),
        ([192, 0, 2, 0], 24, "documentation"),
        ([192, 88, 99, 0], 24, "reserved (6to4 relay)"),
        ([192, 168, 0, 0], 16, "private"),
        ([198, 18, 0, 0], 15, "reserved (benchmarking)"),
        ([198, 51, 100, 0], 24, "documentation"),
        ([203, 0, 113, 0], 24, "documentation"),
        ([224, 0, 0, 0], 4, "multicast"),
        ([240, 0, 0, 0], 4, "reserved (incl. broadcast)"),
    ];
    RANGES
        .iter()
        .find(|(net, prefix, _)| in_v4(ip, *net, *prefix))
        .map(|(_, _, why)| *why)
}

fn forbidden_v6(ip: Ipv6Addr) -> Option<&'static str> {
    let seg = ip.segments();
    let bits = u128::from(ip);
    let in_v6 = |net: u128, prefix: u32| {
        let mask = if prefix == 0 {
            0
        } else {
            u128::MAX << (128 - prefix)
        };
        (bits & mask) == (net & mask)
    };
    let embedded = |hi: u32| Ipv4Addr::from(((bits >> hi) & 0xffff_ffff) as u32);
    if ip.is_unspecified() {
        return Some("unspecified");
    }
    if ip.is_loopback() {
        return Some("loopback");
    }
    // IPv4-mapped (::ffff:a.b.c.d) and the deprecated IPv4-compatible (::a.b.c.d): the v4 rules.
    if in_v6(0xffff_0000_0000, 96) || in_v6(0, 96) {
        return forbidden_v4(embedded(0)).or(None);
    }
    // NAT64 (64:ff9b::/96) reaches the embedded v4 address; the local-use prefix never public.
    if in_v6(0x0064_ff9b_u128 << 96, 96) {
        return forbidden_v4(embedded(0));
    }
    if in_v6(0x0064_ff9b_0001_u128 << 80, 48) {
        return Some("reserved (local NAT64)");
    }
    // 6to4 (2002::/16) embeds a v4 address in bits 16..48.
    if seg[0] == 0x2002 {
        return forbidden_v4(embedded(80));
    }
    if in_v6(0x2001_0db8_u128 << 96, 32) || in_v6(0x3fff_u128 << 112, 20) {
        return Some("documentation");
    }
    if in_v6(0x2001_u128 << 112, 23) {
        return Some("reserved (IETF protocol)");
    }
    if in_v6(0x0100_u128 << 112, 64) {
        return Some("reserved (discard)");
    }
    if in_v6(0xfc00_u128 << 112, 7) {
        return Some("unique local (private)");
    }
    if in_v6(0xfe80_u128 << 112, 10) || in_v6(0xfec0_u128 << 112, 10) {
        return Some("link-local");
    }
    if in_v6(0xff00_u128 << 112, 8) {
        return Some("multicast");
    }
    // Only global unicast (2000::/3) is left to the public.
    if !in_v6(0x2000_u128 << 112, 3) {
        return Some("reserved");
    }
    None
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    struct MapResolver(HashMap<&'static str, Vec<IpAddr>>);

    impl Resolve for MapResolver {
        fn resolve<'a>(
            &'a self,
            host: &'a str,
            _port: u16,
        ) -> Pin<Box<dyn Future<Output = Result<Vec<IpAddr>, String>> + Send + 'a>> {
            let out = self
                .0
                .get(host)
                .cloned()
                .ok_or_else(|| "NXDOMAIN".to_owned());
            Box::pin(async move { out })
        }
    }

    fn guard(policy: GuardPolicy) -> WebhookGuard {
        let map = HashMap::from([
            ("public.test", vec!["93.184.215.14".parse().unwrap()]),
            ("loop.test", vec!["127.0.0.1".parse().unwrap()]),
            (
                "mixed.test",
                vec![
                    "93.184.215.14".parse().unwrap(),
                    "10.1.2.3".parse().unwrap(),
                ],
            ),
            ("v6.test", vec!["2606:2800:220:1::1".parse().unwrap()]),
        ]);
        WebhookGuard::new(policy, Arc::new(MapResolver(map)))
    }

    #[tokio::test]
    async fn refuses_every_internal_form() {
        let g = guard(GuardPolicy::default());
        for url in [
            "http://public.test/h",
            "ftp://public.test/h",
            "https://127.0.0.1/h",
            "https://127.1/h",
            "https://2130706433/h",
            "https://0x7f.1/h",
            "https://0177.0.0.1/h",
            "https://10.0.0.1/h",
            "https://172.16.5.4/h",
            "https://192.168.1.1/h",
            "https://169.254.169.254/latest/meta-data",
            "https://100.64.0.1/h",
            "https://0.0.0.0/h",
            "https://255.255.255.255/h",
            "https://224.0.0.1/h",
            "https://192.0.2.10/h",
            "https://198.18.0.1/h",
            "https://[::1]/h",
            "https://[::]/h",
            "https://[::ffff:127.0.0.1]/h",
            "https://[::ffff:a9fe:a9fe]/h",
            "https://[::127.0.0.1]/h",
            "https://[64:ff9b::10.0.0.1]/h",
            "https://[64:ff9b:1::1]/h",
            "https://[2002:7f00:1::]/h",
            "https://[fd00::1]/h",
            "https://[fe80::1]/h",
            "https://[ff02::1]/h",
            "https://[2001:db8::1]/h",
            "https://localhost/h",
            "https://api.localhost/h",
            "https://loop.test/h",
            "https://mixed.test/h",
            "https://nxdomain.test/h",
            "https://user:pw@public.test/h",
            "not a url",
        ] {
            assert!(g.check(url).await.is_err(), "{url} was let through");
        }
    }

    #[tokio::test]
    async fn lets_public_addresses_through_with_what_to_connect_to() {
        let g = guard(GuardPolicy::default());
        let ok = g.check("https://public.test:8443/h?x=1").await.unwrap();
        assert_eq!(ok.domain.as_deref(), Some("public.test"));
        assert_eq!(ok.addrs, ["93.184.215.14:8443".parse().unwrap()]);
        assert!(g.check("https://v6.test/h").await.is_ok());
        assert!(g.check("https://93.184.215.14/h").await.is_ok());
        assert!(g.check("https://[64:ff9b::5db8:d70e]/h").await.is_ok());
    }

    #[tokio::test]
    async fn the_operator_settings_open_only_what_they_name() {
        let http = guard(GuardPolicy {
            allow_http: true,
            allow_private: false,
        });
        assert!(http.check("http://public.test/h").await.is_ok());
        assert!(http.check("http://127.0.0.1/h").await.is_err());
        let private = guard(GuardPolicy {
            allow_http: true,
            allow_private: true,
        });
        assert!(private.check("http://127.0.0.1:9/h").await.is_ok());
        assert!(private.check("https://loop.test/h").await.is_ok());
    }
}
