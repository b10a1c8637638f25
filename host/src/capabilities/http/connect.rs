//! From an allowed origin to an open connection: the name resolved once, each address
//! judged, and the connection made to an address that was judged, never to a name (a
//! resolver answering differently the second time, DNS rebinding, gains nothing). https
//! goes through rustls with the Mozilla roots (webpki-roots), verifying the origin's name.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, OnceLock};

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::pki_types::ServerName;
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore};

use super::HttpError;
use super::origin::{Allowlist, Origin, OriginHost, Scheme, is_internal};

/// A plain or TLS connection.
pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// The addresses `origin` may be reached at. An address literal is itself listed (the
/// caller checked). A name's internal addresses (loopback, private, link-local: see
/// [`is_internal`]) are dropped unless the same scheme and port on that address is listed
/// too; if nothing is left, the origin is refused.
pub async fn addresses(
    origin: &Origin,
    allowlist: &Allowlist,
) -> Result<Vec<SocketAddr>, HttpError> {
    let name = match &origin.host {
        OriginHost::Ip(address) => return Ok(vec![SocketAddr::new(*address, origin.port)]),
        OriginHost::Name(name) => name,
    };
    let resolved: Vec<SocketAddr> = tokio::net::lookup_host((name.as_str(), origin.port))
        .await
        .map_err(|error| HttpError::Failed(format!("could not resolve {name}: {error}")))?
        .collect();
    let allowed =
        |address: IpAddr| !is_internal(address) || allowlist.allows(&origin.with_address(address));
    let usable: Vec<SocketAddr> = resolved
        .iter()
        .copied()
        .filter(|address| allowed(address.ip()))
        .collect();
    match (usable.is_empty(), resolved.first()) {
        (false, _) => Ok(usable),
        (true, None) => Err(HttpError::Failed(format!("{name} resolves to no address"))),
        (true, Some(first)) => Err(HttpError::NotAllowed {
            origin: origin.to_string(),
            why: format!(
                "{name} resolves to {}, an internal (loopback, private or link-local) address, \
                 which a listed name may not reach; to allow it, list {} as well",
                first.ip(),
                origin.with_address(first.ip())
            ),
            internal: true,
        }),
    }
}

/// Connects to the first of `addresses` that answers, then TLS for https.
pub async fn connect(
    origin: &Origin,
    addresses: &[SocketAddr],
) -> Result<Box<dyn Stream>, HttpError> {
    let mut last_error = None;
    let mut tcp = None;
    for address in addresses {
        match TcpStream::connect(address).await {
            Ok(stream) => {
                tcp = Some(stream);
                break;
            }
            Err(error) => last_error = Some(format!("{address}: {error}")),
        }
    }
    let tcp = tcp.ok_or_else(|| {
        HttpError::Failed(format!(
            "could not connect to {origin} ({})",
            last_error.unwrap_or_default()
        ))
    })?;
    let _ = tcp.set_nodelay(true); // Latency only: a failure changes nothing else.
    match origin.scheme {
        Scheme::Http => Ok(Box::new(tcp)),
        Scheme::Https => {
            let server_name = match &origin.host {
                OriginHost::Name(name) => ServerName::try_from(name.clone())
                    .map_err(|error| HttpError::BadRequest(format!("{name}: {error}")))?,
                OriginHost::Ip(address) => ServerName::IpAddress((*address).into()),
            };
            let tls = TlsConnector::from(tls_config()?)
                .connect(server_name, tcp)
                .await
                .map_err(|error| HttpError::Failed(format!("TLS with {origin} failed: {error}")))?;
            Ok(Box::new(tls))
        }
    }
}

/// The TLS client settings, built once: ring, the default protocol versions, Mozilla's
/// roots, HTTP/1.1 only.
fn tls_config() -> Result<Arc<ClientConfig>, HttpError> {
    static CONFIG: OnceLock<Arc<ClientConfig>> = OnceLock::new();
    if let Some(config) = CONFIG.get() {
        return Ok(config.clone());
    }
    let roots = RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|error| HttpError::Failed(format!("could not set up TLS: {error}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(CONFIG.get_or_init(|| Arc::new(config)).clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_listed_name_resolving_to_loopback_is_refused_unless_its_address_is_listed() {
        let origin = Origin::parse_grant("http://localhost:9").unwrap();
        let names_only = Allowlist::parse(&["http://localhost:9"]).unwrap();
        let error = addresses(&origin, &names_only).await.unwrap_err();
        assert!(
            error
                .to_string()
                .contains("http://localhost:9 is not allowed"),
            "{error}"
        );
        let with_address = Allowlist::parse(&["http://localhost:9", "http://127.0.0.1:9"]).unwrap();
        let found = addresses(&origin, &with_address).await.unwrap();
        assert_eq!(found, vec!["127.0.0.1:9".parse::<SocketAddr>().unwrap()]);
    }
}
