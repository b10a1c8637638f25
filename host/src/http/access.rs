//! Who may use the port: the rules on `Host`, `Origin` and the token, as pure functions of a
//! request's headers.
//!
//! - A request that carries an `Origin` (a browser's) must name this server in `Host`: a
//!   loopback name, the address the client connected to, or an `--allow-host` name. A page on
//!   `evil.example` whose name re-resolves to 127.0.0.1 (DNS rebinding) sends `Host:
//!   evil.example`, and is refused.
//! - A page may open the task channel only from a loopback origin, the server's own origin
//!   (the `Host` it already passed), or an `--allow-origin`. `Origin: null` (a file, or a
//!   sandboxed frame of any site) only when `--allow-origin null` says so.
//! - With a token set, the task channel and /metrics need it, as `Authorization: Bearer` or
//!   `?token=`; compared in constant time.

use std::net::{IpAddr, SocketAddr};

use sha2::{Digest, Sha256};

/// Whether `host` (a `Host` header) names this server.
pub fn host_allowed(host: Option<&str>, local: Option<SocketAddr>, allowed: &[String]) -> bool {
    let Some(host) = host else {
        return false;
    };
    let name = host_name(host);
    if is_loopback_name(name)
        || allowed
            .iter()
            .any(|a| a.eq_ignore_ascii_case(name) || a.eq_ignore_ascii_case(host))
    {
        return true;
    }
    let bare = name.trim_start_matches('[').trim_end_matches(']');
    local.is_some_and(|local| bare.parse::<IpAddr>().is_ok_and(|ip| ip == local.ip()))
}

/// Whether a page at `origin` may open the task channel of the server at `host` (a `Host`
/// that [`host_allowed`] already accepted).
pub fn origin_allowed(origin: &str, host: Option<&str>, allowed: &[String]) -> bool {
    if allowed
        .iter()
        .any(|a| a == "*" || a.eq_ignore_ascii_case(origin))
    {
        return true;
    }
    if origin == "null" {
        return false;
    }
    let Some((_scheme, authority)) = origin.split_once("://") else {
        return false;
    };
    host.is_some_and(|host| host.eq_ignore_ascii_case(authority))
        || is_loopback_name(host_name(authority))
}

/// Whether `presented` is `token`, in time that does not depend on where they differ (both
/// are hashed first, so not on their lengths either).
pub fn token_matches(presented: &str, token: &str) -> bool {
    let presented = Sha256::digest(presented.as_bytes());
    let token = Sha256::digest(token.as_bytes());
    presented
        .iter()
        .zip(token.iter())
        .fold(0u8, |differ, (a, b)| differ | (a ^ b))
        == 0
}

/// The token a request presents: `Authorization: Bearer TOKEN`, else `token=` in the query.
pub fn presented_token<'a>(
    authorization: Option<&'a str>,
    query: Option<&'a str>,
) -> Option<String> {
    if let Some(token) = authorization.and_then(|value| {
        let (scheme, token) = value.trim().split_once(' ')?;
        scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
    }) {
        return Some(token.to_owned());
    }
    query?
        .split('&')
        .find_map(|pair| pair.strip_prefix("token="))
        .map(percent_decode)
}

/// `%XX` and `+` decoded, for a token a browser put in a URL.
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let hex = |at: usize| bytes.get(at).and_then(|&b| (b as char).to_digit(16));
    let mut out = Vec::with_capacity(bytes.len());
    let mut at = 0;
    while at < bytes.len() {
        match (bytes[at], hex(at + 1), hex(at + 2)) {
            (b'%', Some(high), Some(low)) => {
                out.push((high * 16 + low) as u8);
                at += 3;
                continue;
            }
            (b'+', _, _) => out.push(b' '),
            (byte, _, _) => out.push(byte),
        }
        at += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A `host[:port]` without its port; an IPv6 literal keeps its brackets.
fn host_name(authority: &str) -> &str {
    match authority.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) && !name.ends_with(':') => {
            name
        }
        _ => authority,
    }
}

/// `localhost` (and its subdomains, which resolve to loopback), `127.x.y.z` and `[::1]`.
fn is_loopback_name(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    lower == "localhost"
        || lower.ends_with(".localhost")
        || name == "[::1]"
        || name
            .parse::<std::net::Ipv4Addr>()
            .is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOCAL: &str = "127.0.0.1:9501";

    fn local() -> Option<SocketAddr> {
        LOCAL.parse().ok()
    }

    #[test]
    fn only_names_of_this_server_pass_as_host() {
        let allowed = ["tasks.internal".to_owned()];
        for host in [
            "127.0.0.1:9501",
            "localhost:9501",
            "[::1]:9501",
            "tasks.internal:9501",
            "tasks.internal",
        ] {
            assert!(host_allowed(Some(host), local(), &allowed), "{host}");
        }
        let lan: Option<SocketAddr> = "10.1.2.3:9501".parse().ok();
        assert!(host_allowed(Some("10.1.2.3:9501"), lan, &[]));
        for host in [
            "evil.example:9501",
            "127.0.0.1.evil.example",
            "10.1.2.3:9501",
        ] {
            assert!(!host_allowed(Some(host), local(), &allowed), "{host}");
        }
        assert!(!host_allowed(None, local(), &allowed));
    }

    #[test]
    fn only_local_own_or_allowed_origins_may_connect() {
        let allowed = ["https://app.example".to_owned()];
        for origin in [
            "http://127.0.0.1:9501",
            "http://localhost:8080",
            "http://[::1]:9501",
            "https://app.example",
            "http://tasks.internal:9501",
        ] {
            assert!(
                origin_allowed(origin, Some("tasks.internal:9501"), &allowed),
                "{origin}"
            );
        }
        for origin in [
            "null",
            "https://evil.example",
            "http://127.0.0.1.evil.example",
            "junk",
        ] {
            assert!(
                !origin_allowed(origin, Some("127.0.0.1:9501"), &allowed),
                "{origin}"
            );
        }
        assert!(origin_allowed("null", None, &["null".to_owned()]));
        assert!(origin_allowed(
            "https://any.example",
            None,
            &["*".to_owned()]
        ));
    }

    #[test]
    fn tokens_come_from_the_header_or_the_query() {
        assert_eq!(
            presented_token(Some("Bearer abc"), None).as_deref(),
            Some("abc")
        );
        assert_eq!(
            presented_token(Some("bearer  abc "), None).as_deref(),
            Some("abc")
        );
        assert_eq!(
            presented_token(None, Some("a=1&token=x%2By+z")).as_deref(),
            Some("x+y z")
        );
        assert_eq!(presented_token(Some("Basic abc"), None), None);
        assert_eq!(presented_token(None, Some("tokens=1")), None);
        assert!(token_matches("a secret token!!", "a secret token!!"));
        assert!(!token_matches("a secret token!", "a secret token!!"));
        assert_eq!(percent_decode("%zz%4"), "%zz%4");
    }
}
