//! Origins (`scheme://host[:port]`) and the allowlist a manifest grants, compared only in
//! normal form.
//!
//! A URL is parsed by the WHATWG rules (the `url` crate), as a browser would: the host is
//! lower-cased and IDNA-encoded, IPv4 in decimal, octal or hex (`http://2130706433`,
//! `http://0x7f.1`, `http://0177.0.0.1`) becomes dotted 127.0.0.1, IPv6 is compressed
//! (`[0:0::1]` is `[::1]`), `user@` is split off the host (`http://api.example.com@evil.test`
//! is evil.test), and the scheme's default port is dropped. On top of that a trailing dot
//! is removed (`example.com.` is `example.com`) and an IPv4-mapped IPv6 literal
//! (`[::ffff:127.0.0.1]`) is read as the IPv4 address it maps. Two origins are the same
//! only when scheme, host and port are.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use url::{Host, Url};

/// One origin in normal form.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Origin {
    /// `http` or `https`: nothing else is fetched.
    pub scheme: Scheme,
    pub host: OriginHost,
    /// Always present: the scheme's default when the URL names none.
    pub port: u16,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scheme {
    Http,
    Https,
}

impl Scheme {
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }

    pub fn default_port(self) -> u16 {
        match self {
            Scheme::Http => 80,
            Scheme::Https => 443,
        }
    }
}

/// The host of an origin: a (lower-case, ASCII, no trailing dot) name, or an address.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum OriginHost {
    Name(String),
    Ip(IpAddr),
}

impl Origin {
    /// The origin of `url`, in normal form.
    pub fn of(url: &Url) -> Result<Origin, String> {
        let scheme = match url.scheme() {
            "http" => Scheme::Http,
            "https" => Scheme::Https,
            other => {
                return Err(format!(
                    "the scheme {other}: is not fetched; use http or https"
                ));
            }
        };
        let host = match url.host() {
            Some(Host::Domain(name)) => {
                let name = name.trim_end_matches('.');
                if name.is_empty() {
                    return Err(format!("{url} names no host"));
                }
                OriginHost::Name(name.to_owned())
            }
            Some(Host::Ipv4(address)) => OriginHost::Ip(IpAddr::V4(address)),
            Some(Host::Ipv6(address)) => OriginHost::Ip(unmap(address)),
            None => return Err(format!("{url} names no host")),
        };
        let port = url.port().unwrap_or(scheme.default_port());
        Ok(Origin { scheme, host, port })
    }

    /// Parses an origin as an operator writes it in a grant: `scheme://host[:port]`, with
    /// no path (a lone `/` is fine), query, fragment or user.
    pub fn parse_grant(text: &str) -> Result<Origin, String> {
        let url = Url::parse(text).map_err(|error| {
            format!("{text:?} is not an origin ({error}); write scheme://host[:port]")
        })?;
        if url.path() != "/" || url.query().is_some() || url.fragment().is_some() {
            return Err(format!(
                "{text:?} has a path, query or fragment; an origin is scheme://host[:port] only"
            ));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(format!(
                "{text:?} names a user; an origin is scheme://host[:port] only"
            ));
        }
        Origin::of(&url).map_err(|error| format!("{text:?}: {error}"))
    }

    /// The host as a URL writes it (brackets around IPv6), for `Host:` and messages.
    pub fn host_text(&self) -> String {
        match &self.host {
            OriginHost::Name(name) => name.clone(),
            OriginHost::Ip(IpAddr::V4(address)) => address.to_string(),
            OriginHost::Ip(IpAddr::V6(address)) => format!("[{address}]"),
        }
    }

    /// The same scheme and port on the host `address`: the origin an operator lists to let
    /// a name resolve to a private address.
    pub fn with_address(&self, address: IpAddr) -> Origin {
        Origin {
            scheme: self.scheme,
            host: OriginHost::Ip(unmap_ip(address)),
            port: self.port,
        }
    }
}

/// `scheme://host[:port]`, the port shown only when it is not the scheme's default.
impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}", self.scheme.as_str(), self.host_text())?;
        if self.port != self.scheme.default_port() {
            write!(f, ":{}", self.port)?;
        }
        Ok(())
    }
}

/// An IPv4-mapped IPv6 address (`::ffff:a.b.c.d`) is that IPv4 address.
fn unmap(address: Ipv6Addr) -> IpAddr {
    match address.to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4),
        None => IpAddr::V6(address),
    }
}

pub(super) fn unmap_ip(address: IpAddr) -> IpAddr {
    match address {
        IpAddr::V6(v6) => unmap(v6),
        v4 => v4,
    }
}

/// The origins one task may reach: its manifest's `http = [...]`. Empty grants nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Allowlist {
    origins: Vec<Origin>,
}

impl Allowlist {
    /// Parses a grant's entries; the first bad one is the error.
    pub fn parse<S: AsRef<str>>(entries: &[S]) -> Result<Allowlist, String> {
        let origins = entries
            .iter()
            .map(|entry| Origin::parse_grant(entry.as_ref()))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Allowlist { origins })
    }

    pub fn allows(&self, origin: &Origin) -> bool {
        self.origins.contains(origin)
    }

    pub fn is_empty(&self) -> bool {
        self.origins.is_empty()
    }

    /// The origins in normal form, as `list` shows them.
    pub fn origins(&self) -> impl Iterator<Item = &Origin> {
        self.origins.iter()
    }
}

/// Whether a connection to `address` would reach the host itself, its private networks or
/// a link-local neighbour (cloud metadata at 169.254.169.254 among them) rather than the
/// public internet: loopback, private (RFC 1918, shared 100.64/10, IPv6 unique-local),
/// link-local, unspecified, broadcast, multicast, documentation and benchmarking ranges.
pub fn is_internal(address: IpAddr) -> bool {
    match unmap_ip(address) {
        IpAddr::V4(v4) => is_internal_v4(v4),
        IpAddr::V6(v6) => {
            let first = v6.segments()[0];
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (first & 0xfe00) == 0xfc00 // unique local fc00::/7
                || (first & 0xffc0) == 0xfe80 // link-local fe80::/10
                || (first & 0xffc0) == 0xfec0 // site-local (deprecated) fec0::/10
                || first == 0x2001 && v6.segments()[1] == 0x0db8 // documentation
                // IPv4-compatible (::a.b.c.d, deprecated) and NAT64 (64:ff9b::/96) carry an
                // IPv4 address: judge that one.
                || (v6.segments()[..6] == [0; 6]
                    && is_internal_v4(Ipv4Addr::from_bits(v6.to_bits() as u32)))
                || (v6.segments()[..6] == [0x64, 0xff9b, 0, 0, 0, 0]
                    && is_internal_v4(Ipv4Addr::from_bits(v6.to_bits() as u32)))
        }
    }
}

fn is_internal_v4(v4: Ipv4Addr) -> bool {
    let [a, b, _, _] = v4.octets();
    v4.is_loopback()
        || v4.is_private()
        || v4.is_link_local()
        || v4.is_unspecified()
        || v4.is_broadcast()
        || v4.is_multicast()
        || v4.is_documentation()
        || a == 0 // "this network"
        || (a == 100 && (64..128).contains(&b)) // shared address space (CGNAT)
        || (a == 198 && (b == 18 || b == 19)) // benchmarking
        || a >= 240 // reserved
}

#[cfg(test)]
mod tests {
    use super::*;

    fn origin(url: &str) -> String {
        Origin::of(&Url::parse(url).unwrap()).unwrap().to_string()
    }

    #[test]
    fn urls_are_compared_in_normal_form() {
        for (url, expected) in [
            ("HTTP://API.Example.COM/x", "http://api.example.com"),
            ("http://api.example.com:80/", "http://api.example.com"),
            ("https://api.example.com:443", "https://api.example.com"),
            (
                "https://api.example.com:8443",
                "https://api.example.com:8443",
            ),
            ("http://api.example.com./", "http://api.example.com"),
            ("http://api.example.com@evil.test/", "http://evil.test"),
            ("http://user:pw@evil.test:81/", "http://evil.test:81"),
            ("http://2130706433/", "http://127.0.0.1"),
            ("http://0x7f.1/", "http://127.0.0.1"),
            ("http://0177.0.0.1/", "http://127.0.0.1"),
            ("http://127.1/", "http://127.0.0.1"),
            ("http://[0:0:0:0:0:0:0:1]:8080/", "http://[::1]:8080"),
            ("http://[::ffff:127.0.0.1]/", "http://127.0.0.1"),
            ("http://[::FFFF:7f00:1]/", "http://127.0.0.1"),
            ("http://bücher.example/", "http://xn--bcher-kva.example"),
        ] {
            assert_eq!(origin(url), expected, "{url}");
        }
    }

    #[test]
    fn other_schemes_and_hostless_urls_are_refused() {
        for url in [
            "file:///etc/passwd",
            "ftp://example.com/",
            "data:text/plain,x",
        ] {
            assert!(Origin::of(&Url::parse(url).unwrap()).is_err(), "{url}");
        }
    }

    #[test]
    fn grants_are_origins_only() {
        let list =
            Allowlist::parse(&["https://API.example.com", "http://127.0.0.1:8080/"]).unwrap();
        let allowed = |url: &str| list.allows(&Origin::of(&Url::parse(url).unwrap()).unwrap());
        assert!(allowed("https://api.example.com/v1?q=1"));
        assert!(allowed("https://api.example.com.:443/"));
        assert!(allowed("http://2130706433:8080/"));
        assert!(allowed("http://x@127.0.0.1:8080/"));
        assert!(!allowed("http://api.example.com/"), "scheme differs");
        assert!(!allowed("https://api.example.com:444/"), "port differs");
        assert!(!allowed("https://api.example.com.evil.test/"));
        assert!(
            !allowed("http://localhost:8080/"),
            "a name is not its address"
        );
        assert!(
            !allowed("http://127.0.0.1/"),
            "default port differs from 8080"
        );
        for bad in [
            "api.example.com",
            "https://api.example.com/path",
            "https://api.example.com/?q",
            "https://user@api.example.com",
            "ftp://example.com",
        ] {
            assert!(Allowlist::parse(&[bad]).is_err(), "{bad}");
        }
    }

    #[test]
    fn internal_addresses_are_recognised() {
        for internal in [
            "127.0.0.1",
            "127.9.9.9",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "0.0.0.0",
            "100.64.0.1",
            "255.255.255.255",
            "::1",
            "::",
            "fd00::1",
            "fe80::1",
            "::ffff:10.0.0.1",
            "::127.0.0.1",
            "64:ff9b::a00:1",
        ] {
            assert!(is_internal(internal.parse().unwrap()), "{internal}");
        }
        for public in ["93.184.215.14", "1.1.1.1", "2606:4700::1111", "172.32.0.1"] {
            assert!(!is_internal(public.parse().unwrap()), "{public}");
        }
    }
}
