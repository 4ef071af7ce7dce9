//! The client's address: the TCP peer, or — only when the peer is a trusted
//! proxy (`TRUSTED_PROXIES`) — the right-most untrusted address of
//! `X-Forwarded-For`.
//!
//! `X-Forwarded-For` from a peer that is not trusted is ignored and counted
//! (`untrusted_forwarded_for_total`): behind a proxy missing from
//! `TRUSTED_PROXIES` every client has the proxy's address and shares its
//! rate limits, which this counter (and, in production, one warning) shows.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use actix_web::HttpRequest;
use ipnet::IpNet;

/// Proxies whose `X-Forwarded-For` is believed.
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies {
    nets: Vec<IpNet>,
    /// Whether an ignored `X-Forwarded-For` is worth one warning (production).
    warn_untrusted: bool,
    /// Set once that warning was logged, so a misconfigured proxy does not
    /// flood the log.
    warned: Arc<AtomicBool>,
}

impl TrustedProxies {
    /// Parses `TRUSTED_PROXIES` entries (addresses or CIDR ranges).
    pub fn parse(entries: &[String]) -> Result<TrustedProxies, String> {
        entries
            .iter()
            .map(|e| {
                e.parse::<IpNet>()
                    .or_else(|_| e.parse::<IpAddr>().map(IpNet::from))
                    .map_err(|_| format!("TRUSTED_PROXIES is invalid: {e:?} is not an address or CIDR range"))
            })
            .collect::<Result<Vec<_>, _>>()
            .map(|nets| TrustedProxies {
                nets,
                ..TrustedProxies::default()
            })
    }

    /// Logs one warning the first time `X-Forwarded-For` arrives from a
    /// peer that is not trusted (production does this).
    #[must_use]
    pub fn warning_once(self) -> TrustedProxies {
        TrustedProxies {
            warn_untrusted: true,
            ..self
        }
    }

    /// Whether no proxy is trusted (every client is its TCP peer).
    pub fn is_empty(&self) -> bool {
        self.nets.is_empty()
    }

    fn trusts(&self, ip: IpAddr) -> bool {
        self.nets.iter().any(|net| net.contains(&ip))
    }

    /// The client address of `req`.
    pub fn client_ip(&self, req: &HttpRequest) -> Option<IpAddr> {
        let peer = req.peer_addr()?.ip();
        if !self.trusts(peer) {
            if req.headers().contains_key("x-forwarded-for") {
                self.ignored_forwarded_for(peer);
            }
            return Some(peer);
        }
        let forwarded: Vec<IpAddr> = req
            .headers()
            .get_all("x-forwarded-for")
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|s| s.trim().parse().ok())
            .collect();
        Some(forwarded.into_iter().rev().find(|ip| !self.trusts(*ip)).unwrap_or(peer))
    }

    /// A peer we do not trust sent `X-Forwarded-For`: a client forging it,
    /// or a proxy missing from `TRUSTED_PROXIES`.
    fn ignored_forwarded_for(&self, peer: IpAddr) {
        metrics::counter!("untrusted_forwarded_for_total").increment(1);
        if self.warn_untrusted && !self.warned.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                peer = %peer,
                "x-forwarded-for from a peer not in TRUSTED_PROXIES is ignored; if this peer is your proxy, \
                 add it, or every client behind it shares its rate limits (counted in untrusted_forwarded_for_total)"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::test::TestRequest;

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let proxies = TrustedProxies::parse(&["10.0.0.0/8".into(), "127.0.0.1".into()]).unwrap();
        let via_proxy = TestRequest::default()
            .peer_addr("10.1.2.3:5000".parse().unwrap())
            .insert_header(("X-Forwarded-For", "1.2.3.4, 203.0.113.9, 10.0.0.7"))
            .to_http_request();
        assert_eq!(proxies.client_ip(&via_proxy), Some("203.0.113.9".parse().unwrap()));

        let direct = TestRequest::default()
            .peer_addr("198.51.100.1:5000".parse().unwrap())
            .insert_header(("X-Forwarded-For", "1.2.3.4"))
            .to_http_request();
        assert_eq!(proxies.client_ip(&direct), Some("198.51.100.1".parse().unwrap()));
        assert!(TrustedProxies::parse(&["nonsense".into()]).is_err());
    }
}
