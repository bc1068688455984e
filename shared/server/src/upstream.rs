//! Which upstreams a server may forward to, and the hop mark that stops a forwarding loop.
//!
//! Workers (and, at the edge, coordinators) tell a server where they listen, so a stranger could point it at the
//! server itself (one request would then loop until the file descriptors run out) or at an address inside the
//! operator's network (server-side request forgery). [`Upstreams`] refuses both:
//! - an address that is the server's own (its port on one of the machine's own addresses);
//! - unless private upstreams are allowed (a LAN deployment, a machine's own tests), a loopback, private,
//!   link-local or otherwise non-public address.
//!
//! It is checked on the address finally connected to ([`Upstreams::connect`] resolves the name itself), so a name
//! that resolves somewhere else later gains nothing; registration checks the same rule early
//! ([`Upstreams::check_url`]) so that a volunteer hears at once what is wrong.
//!
//! Every forwarded request also carries a `Via` entry naming this server process ([`Upstreams::enter`]): a request
//! that comes back carrying it, or that went through too many servers, is answered 508 instead of being sent on.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use axum::http::{HeaderMap, HeaderValue, header};
use rand::RngCore;
use tokio::net::TcpStream;

use crate::error::ApiError;
use crate::forward;

/// Most servers a request may pass through (`Via` entries) before it is taken for a loop.
pub const MAX_HOPS: usize = 8;

/// Why an upstream address is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Refused {
    /// It is this server.
    #[error("{0} is this server's own address: a request sent there would come straight back")]
    Own(SocketAddr),
    /// It is not a public address, and private ones are not allowed.
    #[error(
        "{0} is a {1} address, which this server does not forward to (its operator allows private addresses with \
         private_upstreams = true, for a LAN)"
    )]
    Private(IpAddr, &'static str),
}

impl Refused {
    /// The 422 for a registered `field` whose URL is refused, so that whoever registers it hears at once what is
    /// wrong.
    pub fn in_field(self, field: &str) -> ApiError {
        ApiError::Invalid {
            field: field.into(),
            message: self.to_string(),
        }
    }
}

/// The rule for upstream addresses, how long reaching one may take, and this process's hop mark.
#[derive(Debug, Clone)]
pub struct Upstreams {
    own: SocketAddr,
    allow_private: bool,
    timeout: Duration,
    mark: String,
    via: HeaderValue,
    /// Connections kept alive between requests ([`Upstreams::open`], [`Upstreams::send`]).
    pool: std::sync::Arc<forward::Pool>,
}

impl Upstreams {
    /// Whether it forwards to loopback, private and link-local addresses (a LAN deployment).
    pub fn allows_private(&self) -> bool {
        self.allow_private
    }

    /// The rule for a server listening on `own`: `private_upstreams` lets it forward to non-public addresses (the
    /// setting; none: only when `own` is a loopback address, where only this machine's upstreams can reach it
    /// anyway). Resolving and connecting each take at most `timeout`.
    pub fn new(own: SocketAddr, private_upstreams: Option<bool>, timeout: Duration) -> Self {
        let mut id = [0u8; 6];
        rand::rng().fill_bytes(&mut id);
        let mark = format!("commons-{}", hex::encode(id));
        let via = HeaderValue::from_str(&format!("1.1 {mark}")).expect("hex is a header value");
        Self {
            own,
            allow_private: private_upstreams.unwrap_or_else(|| own.ip().is_loopback()),
            timeout,
            mark,
            via,
            pool: Default::default(),
        }
    }

    /// A connection to `target`'s upstream: one kept alive from an earlier request when there is one, else a new
    /// one ([`Upstreams::connect`], with its checks; then TLS, within the timeout, for an `https://` target). A
    /// kept one was checked when it was opened.
    pub async fn open(&self, target: &forward::Target) -> std::io::Result<forward::Conn> {
        if let Some(kept) = self.pool.take(target) {
            return Ok(forward::Conn::Kept(kept));
        }
        let tcp = self.connect(&target.authority).await?;
        if !target.tls {
            return Ok(forward::Conn::New(Box::new(tcp)));
        }
        let tls = tokio::time::timeout(self.timeout, crate::tls::connect(target.host(), tcp))
            .await
            .map_err(|_| {
                std::io::Error::new(std::io::ErrorKind::TimedOut, "the TLS handshake timed out")
            })??;
        Ok(forward::Conn::New(Box::new(tls)))
    }

    /// Sends `req` to `target` over `conn` (from [`Upstreams::open`]), keeping the connection for the next request
    /// once the answer has ended ([`forward::send_kept`]).
    pub async fn send(
        &self,
        conn: forward::Conn,
        target: &forward::Target,
        req: axum::extract::Request,
        client: IpAddr,
        timeout: Duration,
    ) -> Result<axum::response::Response, crate::error::ApiError> {
        forward::send_kept(&self.pool, conn, target, req, client, timeout).await
    }

    /// Idle connections kept now.
    pub fn kept(&self) -> usize {
        self.pool.idle()
    }

    /// Whether `addr` may be connected to.
    pub fn check(&self, addr: SocketAddr) -> Result<(), Refused> {
        let ip = addr.ip().to_canonical();
        if addr.port() == self.own.port() && (ip == self.own.ip() || is_local(ip)) {
            return Err(Refused::Own(addr));
        }
        if !self.allow_private
            && let Some(kind) = non_public(ip)
        {
            return Err(Refused::Private(ip, kind));
        }
        Ok(())
    }

    /// Checks an upstream's base URL as it is registered: every address its host resolves to now (a name that
    /// does not resolve yet passes, and is checked again on every connection).
    pub async fn check_url(&self, url: &str) -> Result<(), Refused> {
        let Some(authority) = url.parse().ok().as_ref().and_then(forward::authority) else {
            return Ok(());
        };
        let Ok(Ok(addrs)) =
            tokio::time::timeout(self.timeout, tokio::net::lookup_host(authority)).await
        else {
            return Ok(());
        };
        addrs.into_iter().try_for_each(|a| self.check(a))
    }

    /// Opens a TCP connection to `authority` (`host:port`) to the first of its addresses that is allowed,
    /// resolving and connecting each within the timeout. A refused address is an error of kind
    /// `PermissionDenied` that says why.
    pub async fn connect(&self, authority: &str) -> std::io::Result<TcpStream> {
        let resolved = tokio::time::timeout(self.timeout, tokio::net::lookup_host(authority))
            .await
            .map_err(|_| {
                std::io::Error::new(std::io::ErrorKind::TimedOut, "resolving timed out")
            })??;
        let mut refused = None;
        let allowed: Vec<SocketAddr> = resolved
            .filter(|&addr| self.check(addr).map_err(|r| refused = Some(r)).is_ok())
            .collect();
        if allowed.is_empty() {
            return Err(match refused {
                Some(r) => std::io::Error::new(std::io::ErrorKind::PermissionDenied, r),
                None => std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    format!("{authority} resolves to no address"),
                ),
            });
        }
        forward::connect(&allowed[..], self.timeout).await
    }

    /// Checks that a request about to be forwarded has not been here before nor through too many servers, then
    /// adds this server's `Via` entry. 508 (`loop_detected`) otherwise.
    pub fn enter(&self, headers: &mut HeaderMap) -> Result<(), ApiError> {
        let mut hops = 0;
        for value in headers.get_all(header::VIA) {
            let Ok(value) = value.to_str() else { continue };
            for entry in value.split(',') {
                hops += 1;
                if entry.split_whitespace().nth(1) == Some(self.mark.as_str()) {
                    return Err(ApiError::LoopDetected(
                        "this request has already been through this server: an upstream points back at it".into(),
                    ));
                }
            }
        }
        if hops >= MAX_HOPS {
            return Err(ApiError::LoopDetected(format!(
                "this request has been through {hops} servers already; an upstream is misconfigured"
            )));
        }
        headers.append(header::VIA, self.via.clone());
        Ok(())
    }
}

/// Whether `ip` is one of this machine's addresses: loopback, unspecified, or one a socket can be bound to.
fn is_local(ip: IpAddr) -> bool {
    ip.is_loopback()
        || ip.is_unspecified()
        || std::net::UdpSocket::bind(SocketAddr::new(ip, 0)).is_ok()
}

/// What kind of non-public address `ip` is, or `None` for a public one.
fn non_public(ip: IpAddr) -> Option<&'static str> {
    match ip.to_canonical() {
        IpAddr::V4(v4) => non_public_v4(v4),
        IpAddr::V6(v6) => non_public_v6(v6),
    }
}

fn non_public_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, c, _] = ip.octets();
    Some(if ip.is_loopback() {
        "loopback"
    } else if ip.is_unspecified() || a == 0 {
        "unspecified"
    } else if ip.is_private() {
        "private"
    } else if ip.is_link_local() {
        "link-local"
    } else if a == 100 && (64..128).contains(&b) {
        "carrier-grade NAT"
    } else if ip.is_documentation()
        || (a == 198 && (18..20).contains(&b))
        || (a == 192 && b == 0 && c == 0)
    {
        "reserved"
    } else if ip.is_multicast() || ip.is_broadcast() || a >= 240 {
        "multicast or reserved"
    } else {
        return None;
    })
}

fn non_public_v6(ip: Ipv6Addr) -> Option<&'static str> {
    let first = ip.segments()[0];
    Some(if ip.is_loopback() {
        "loopback"
    } else if ip.is_unspecified() {
        "unspecified"
    } else if ip.is_unique_local() {
        "private"
    } else if ip.is_unicast_link_local() {
        "link-local"
    } else if ip.is_multicast() {
        "multicast"
    } else if first == 0x2001 && ip.segments()[1] == 0x0db8 {
        "reserved"
    } else if first == 0x0064 && ip.segments()[1] == 0xff9b {
        // NAT64: the IPv4 address inside decides.
        let [.., a, b] = ip.segments();
        let v4 = Ipv4Addr::from((u32::from(a) << 16) | u32::from(b));
        return non_public_v4(v4);
    } else {
        return None;
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(private: bool) -> Upstreams {
        Upstreams::new(
            "0.0.0.0:8080".parse().unwrap(),
            Some(private),
            Duration::from_secs(2),
        )
    }

    #[test]
    fn own_address_is_refused_whatever_the_rule() {
        for private in [false, true] {
            let r = rule(private);
            for own in [
                "127.0.0.1:8080",
                "[::1]:8080",
                "0.0.0.0:8080",
                "[::ffff:127.0.0.1]:8080",
            ] {
                assert!(
                    matches!(r.check(own.parse().unwrap()), Err(Refused::Own(_))),
                    "{own} (private {private})"
                );
            }
        }
        // Another port on this machine is another program.
        assert_eq!(rule(true).check("127.0.0.1:8081".parse().unwrap()), Ok(()));
    }

    #[test]
    fn private_upstreams_default_to_whether_the_server_listens_on_loopback() {
        let t = Duration::from_secs(2);
        let private = "10.1.2.3:80".parse().unwrap();
        let on_loopback = Upstreams::new("127.0.0.1:8080".parse().unwrap(), None, t);
        assert_eq!(on_loopback.check(private), Ok(()));
        let public = Upstreams::new("0.0.0.0:8080".parse().unwrap(), None, t);
        assert!(matches!(public.check(private), Err(Refused::Private(..))));
    }

    #[test]
    fn private_addresses_need_the_setting() {
        let refused = [
            "127.0.0.1:9000",
            "10.1.2.3:80",
            "172.16.0.1:80",
            "192.168.1.1:80",
            "169.254.169.254:80",
            "100.64.0.1:80",
            "0.0.0.0:81",
            "224.0.0.1:80",
            "[::1]:80",
            "[fd00::1]:80",
            "[fe80::1]:80",
            "[::ffff:10.0.0.1]:80",
            "[64:ff9b::a00:1]:80",
        ];
        for a in refused {
            let addr: SocketAddr = a.parse().unwrap();
            assert!(
                matches!(rule(false).check(addr), Err(Refused::Private(..))),
                "{a}"
            );
            assert_eq!(rule(true).check(addr), Ok(()), "{a}");
        }
        for a in [
            "1.1.1.1:443",
            "[2606:4700::1111]:443",
            "[64:ff9b::101:101]:80",
        ] {
            assert_eq!(rule(false).check(a.parse().unwrap()), Ok(()), "{a}");
        }
    }

    #[test]
    fn the_message_says_what_to_change() {
        let e = rule(false)
            .check("192.168.1.1:80".parse().unwrap())
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "192.168.1.1 is a private address, which this server does not forward to (its operator allows private \
             addresses with private_upstreams = true, for a LAN)"
        );
    }

    #[tokio::test]
    async fn urls_are_checked_on_what_they_resolve_to() {
        let r = rule(false);
        assert!(matches!(
            r.check_url("http://localhost:9000").await,
            Err(Refused::Private(..))
        ));
        assert!(matches!(
            rule(true).check_url("http://localhost:8080/x").await,
            Err(Refused::Own(_))
        ));
        assert_eq!(r.check_url("https://1.1.1.1").await, Ok(()));
        assert!(
            r.check_url("http://[::1]").await.is_err(),
            "port 80 by default"
        );
    }

    #[tokio::test]
    async fn connect_refuses_before_connecting() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let e = rule(false)
            .connect(&format!("localhost:{port}"))
            .await
            .unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::PermissionDenied);
        assert!(e.to_string().contains("loopback"), "{e}");
        rule(true)
            .connect(&format!("localhost:{port}"))
            .await
            .unwrap();
    }

    #[test]
    fn a_request_that_comes_back_is_stopped() {
        let a = rule(true);
        let b = rule(true);
        let mut h = HeaderMap::new();
        a.enter(&mut h).unwrap();
        b.enter(&mut h).unwrap();
        assert_eq!(h.get_all(header::VIA).iter().count(), 2);
        let e = a.enter(&mut h).unwrap_err();
        assert_eq!(e.status().as_u16(), 508);
        // Too many hops, even through servers it has not seen.
        let mut h = HeaderMap::new();
        h.insert(
            header::VIA,
            HeaderValue::from_static("1.1 a, 1.1 b, 1.1 c, 1.1 d, 1.1 e, 1.1 f, 1.1 g, 1.1 h"),
        );
        assert_eq!(b.enter(&mut h).unwrap_err().status().as_u16(), 508);
    }
}
