//! TLS of the client: one rustls configuration, with the `ring` crypto provider, shared by
//! the HTTP client (reqwest) and the event WebSocket (tokio-tungstenite), so `https://` and
//! `wss://` trust exactly the same certificates.
//!
//! Roots: the platform's CA certificates through `rustls-native-certs` (the OS bundle the
//! administrator keeps up to date, with any private CA installed there, or the file
//! `SSL_CERT_FILE` names), rather than a snapshot compiled in (`webpki-roots`), which
//! goes stale, ignores a company's CA and `SSL_CERT_FILE`. A CA bundle given by the caller
//! replaces them; [`Verify::Off`] checks no certificate (testing only).
//!
//! A refused certificate or a failed handshake is [`ClientError::Tls`]: never retried and
//! never answered by falling back to plain HTTP or to polling.

use std::error::Error as StdError;
use std::path::PathBuf;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{ring, verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

use crate::ClientError;

/// Which certificates a client trusts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Verify {
    /// The platform's CA certificates (or those of the file `SSL_CERT_FILE` names).
    #[default]
    Platform,
    /// The CA certificates of this PEM file, and no others.
    CaBundle(PathBuf),
    /// None checked: anyone on the path can read and change the traffic.
    Off,
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(ring::default_provider())
}

/// The rustls configuration for `verify`.
pub fn client_config(verify: &Verify) -> Result<ClientConfig, ClientError> {
    let provider = provider();
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| ClientError::Tls(format!("TLS set-up: {e}")))?;
    Ok(match verify {
        Verify::Platform => builder
            .with_root_certificates(platform_roots()?)
            .with_no_client_auth(),
        Verify::CaBundle(path) => builder
            .with_root_certificates(bundle_roots(path)?)
            .with_no_client_auth(),
        Verify::Off => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoCertificateCheck(provider)))
            .with_no_client_auth(),
    })
}

/// A configuration that trusts nothing, for a client of a plain `http://` service: its
/// TLS is never used (a redirect to `https://` fails rather than trust anything), and the
/// platform's certificates are not read for nothing.
pub fn untrusting_config() -> Result<ClientConfig, ClientError> {
    Ok(ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| ClientError::Tls(format!("TLS set-up: {e}")))?
        .with_root_certificates(RootCertStore::empty())
        .with_no_client_auth())
}

fn platform_roots() -> Result<RootCertStore, ClientError> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = RootCertStore::empty();
    let (added, _unparsable) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        let why = found
            .errors
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; ");
        return Err(ClientError::Tls(format!(
            "no CA certificates found on this system{}{why}: give the service's CA with \
             verify=\"ca.pem\" (or QDISPATCH_CA_BUNDLE, or SSL_CERT_FILE)",
            if why.is_empty() { "" } else { ": " }
        )));
    }
    Ok(roots)
}

fn bundle_roots(path: &PathBuf) -> Result<RootCertStore, ClientError> {
    let shown = path.display();
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
        .map_err(|e| ClientError::Tls(format!("cannot read the CA bundle {shown}: {e}")))?;
    if certs.is_empty() {
        return Err(ClientError::Tls(format!(
            "the CA bundle {shown} holds no PEM certificate"
        )));
    }
    let mut roots = RootCertStore::empty();
    for cert in certs {
        roots
            .add(cert)
            .map_err(|e| ClientError::Tls(format!("the CA bundle {shown}: {e}")))?;
    }
    Ok(roots)
}

/// Accepts any certificate, but still checks that the server holds its key (the
/// handshake signatures), as `verify=False` means in requests.
#[derive(Debug)]
struct NoCertificateCheck(Arc<CryptoProvider>);

impl ServerCertVerifier for NoCertificateCheck {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// The rustls error in `err`'s chain, if the failure was TLS's. `io::Error::source` skips
/// the error an `io::Error` wraps, so those are opened with `get_ref`.
pub fn tls_failure<'a>(err: &'a (dyn StdError + 'static)) -> Option<&'a rustls::Error> {
    let mut current = Some(err);
    while let Some(e) = current {
        if let Some(tls) = e.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        if let Some(inner) = e
            .downcast_ref::<std::io::Error>()
            .and_then(std::io::Error::get_ref)
        {
            if let Some(tls) = tls_failure(inner) {
                return Some(tls);
            }
        }
        current = e.source();
    }
    None
}

/// What a user reads when the TLS handshake with `host` failed with `err`.
pub fn describe(host: &str, err: &rustls::Error) -> String {
    let hint = match err {
        rustls::Error::InvalidCertificate(_) => {
            " (the service's certificate is not trusted: give the CA that signed it with \
             verify=\"ca.pem\" or QDISPATCH_CA_BUNDLE)"
        }
        rustls::Error::InvalidMessage(_) => " (is the service speaking TLS on this port?)",
        _ => "",
    };
    format!("TLS handshake with {host} failed: {err}{hint}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_bundle_names_the_file() {
        let err = client_config(&Verify::CaBundle("/nonexistent/ca.pem".into()))
            .expect_err("no such file");
        assert!(
            matches!(&err, ClientError::Tls(m) if m.contains("/nonexistent/ca.pem")),
            "{err:?}"
        );
    }

    #[test]
    fn a_bundle_without_certificates_is_refused() {
        let path = std::env::temp_dir().join(format!("qd-empty-{}.pem", std::process::id()));
        std::fs::write(&path, "not a certificate\n").expect("write");
        let err = client_config(&Verify::CaBundle(path.clone())).expect_err("empty");
        std::fs::remove_file(&path).ok();
        assert!(
            matches!(&err, ClientError::Tls(m) if m.contains("holds no PEM certificate")),
            "{err:?}"
        );
    }

    #[test]
    fn tls_errors_are_found_inside_io_errors() {
        let tls = rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer);
        let io = std::io::Error::new(std::io::ErrorKind::InvalidData, tls.clone());
        assert_eq!(tls_failure(&io), Some(&tls));
        let plain = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        assert_eq!(tls_failure(&plain), None);
        let text = describe("127.0.0.1:8443", &tls);
        assert!(
            text.contains("127.0.0.1:8443") && text.contains("UnknownIssuer"),
            "{text}"
        );
    }

    #[test]
    fn off_and_untrusting_configs_build() {
        client_config(&Verify::Off).expect("off");
        untrusting_config().expect("untrusting");
    }
}
