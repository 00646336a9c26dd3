//! TLS client configuration over rustls (ring): the certificate policies, one cached config each.

use std::cell::Cell;
use std::env::var_os;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use sha2::{Digest, Sha256};

/// Whether TLS is used, and how the peer's certificate is checked (C dma's `VERIFYCERT`,
/// `FINGERPRINT`, `CERTFILE`); the handshake's signatures are always verified. From Python: a
/// dict of these fields.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[cfg_attr(feature = "python", derive(pyo3::FromPyObject), pyo3(from_item_all))]
pub struct TlsPolicy {
    pub mode: TlsMode,
    /// Check the chain against the system roots (plus `ca_file`) and the host name or IP.
    pub verify_cert: bool,
    /// Extra trusted CA certificates (PEM), used when `verify_cert` is on.
    pub ca_file: Option<PathBuf>,
    /// SHA-256 of the leaf certificate's DER encoding that the peer must present.
    pub fingerprint: Option<[u8; 32]>,
    /// One PEM file holding our certificate chain and its private key.
    pub client_cert: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TlsMode {
    #[default]
    None,
    /// STARTTLS is required: without it, fail temporarily before any mail is sent.
    StartTls,
    /// STARTTLS when offered and accepted, plain text otherwise.
    Opportunistic,
    /// TLS from the first byte (port 465).
    Implicit,
}

impl FromStr for TlsMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "none" => Ok(TlsMode::None),
            "starttls" => Ok(TlsMode::StartTls),
            "opportunistic" => Ok(TlsMode::Opportunistic),
            "implicit" => Ok(TlsMode::Implicit),
            _ => Err(format!(
                "invalid tls mode {s:?} (none, starttls, opportunistic or implicit)"
            )),
        }
    }
}

/// The name for SNI and the certificate check; rustls sends no SNI for an IP literal.
pub fn server_name(host: &str) -> Result<ServerName<'static>, String> {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    ServerName::try_from(bare.to_owned()).map_err(|_| format!("invalid TLS server name {host:?}"))
}

/// The config for `policy`, cached per policy, files and environment: connections share rustls's
/// session cache (resumption) and the system roots are parsed once.
pub fn client_config(policy: &TlsPolicy) -> Result<Arc<ClientConfig>, String> {
    type Key = (TlsPolicy, [Option<OsString>; 2], [Option<SystemTime>; 2]);
    static CACHE: Mutex<Vec<(Key, Arc<ClientConfig>)>> = Mutex::new(Vec::new());
    let mtime = |p: &Option<PathBuf>| p.as_ref().and_then(|p| p.metadata().ok()?.modified().ok());
    let key = (
        policy.clone(),
        [var_os("SSL_CERT_FILE"), var_os("SSL_CERT_DIR")],
        [mtime(&policy.ca_file), mtime(&policy.client_cert)],
    );
    let mut cache = CACHE.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some((_, config)) = cache.iter().find(|(k, _)| *k == key) {
        return Ok(config.clone());
    }
    let config = Arc::new(build_config(policy)?);
    if cache.len() >= 16 {
        cache.remove(0);
    }
    cache.push((key, config.clone()));
    Ok(config)
}

fn build_config(policy: &TlsPolicy) -> Result<ClientConfig, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let roots = policy.verify_cert.then(|| {
        let store = Arc::new(root_store(policy.ca_file.as_deref())?);
        let verifier = WebPkiServerVerifier::builder_with_provider(store, provider.clone()).build();
        verifier.map_err(|e| format!("cannot build certificate verifier: {e}"))
    });
    let verifier = Arc::new(PolicyVerifier {
        roots: roots.transpose()?,
        fingerprint: policy.fingerprint,
        algs: provider.signature_verification_algorithms,
    });
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup: {e}"))?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let Some(path) = &policy.client_cert else {
        return Ok(builder.with_no_client_auth());
    };
    let chain = read_pem_certs(path, "client certificate")?;
    let key = PrivateKeyDer::from_pem_file(path).map_err(|e| match e {
        pem::Error::NoItemsFound => format!("client certificate {}: no private key found", path.display()),
        e => format!("cannot read {}: {e}", path.display()),
    })?;
    builder
        .with_client_auth_cert(chain, key)
        .map_err(|e| format!("client certificate {}: {e}", path.display()))
}

/// System roots (rustls-native-certs honours `SSL_CERT_FILE` / `SSL_CERT_DIR`), Mozilla's roots
/// when the system has none, plus the caller's CA file.
fn root_store(ca_file: Option<&Path>) -> Result<RootCertStore, String> {
    let mut store = RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    store.add_parsable_certificates(native.certs);
    if store.is_empty() {
        store.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    }
    if let Some(path) = ca_file {
        for cert in read_pem_certs(path, "CA file")? {
            store
                .add(cert)
                .map_err(|e| format!("CA file {}: {e}", path.display()))?;
        }
    }
    Ok(store)
}

fn read_pem_certs(path: &Path, what: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let unreadable = |e| format!("cannot read {}: {e}", path.display());
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(unreadable)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(unreadable)?;
    if certs.is_empty() {
        return Err(format!("{what} {}: no certificate found", path.display()));
    }
    Ok(certs)
}

thread_local! {
    /// Hex SHA-256 of the leaf certificate last presented on this thread, checked or not (the
    /// handshake runs the verifier on the caller's thread): a failed check still shows it.
    pub static PRESENTED: Cell<Option<String>> = const { Cell::new(None) };
}

/// Applies `TlsPolicy`, and always checks the handshake signatures: "no verification" still
/// means the peer holds the key of the certificate it showed.
#[derive(Debug)]
struct PolicyVerifier {
    roots: Option<Arc<WebPkiServerVerifier>>,
    fingerprint: Option<[u8; 32]>,
    algs: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for PolicyVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let actual = Sha256::digest(end_entity);
        PRESENTED.set(Some(format!("{actual:x}")));
        if self.fingerprint.is_some_and(|expected| actual[..] != expected) {
            let text = format!("certificate fingerprint mismatch: peer presented sha256 {actual:x}");
            return Err(rustls::Error::General(text));
        }
        if let Some(roots) = &self.roots {
            roots.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)?;
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_names() {
        assert!(matches!(server_name("mx.test").unwrap(), ServerName::DnsName(_)));
        assert!(matches!(
            server_name("127.0.0.1").unwrap(),
            ServerName::IpAddress(_)
        ));
        assert!(matches!(server_name("[::1]").unwrap(), ServerName::IpAddress(_)));
        assert!(server_name("bad name").is_err());
    }

    #[test]
    fn sha256_hex_is_lowercase() {
        assert_eq!(
            format!("{:x}", Sha256::digest(b"abc")),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn configs_for_each_policy() {
        let none = client_config(&TlsPolicy::default()).unwrap();
        let again = client_config(&TlsPolicy::default()).unwrap();
        assert!(Arc::ptr_eq(&none, &again), "config is cached");
        let pinned = TlsPolicy {
            fingerprint: Some([7; 32]),
            ..TlsPolicy::default()
        };
        assert!(client_config(&pinned).is_ok());
    }

    #[test]
    fn missing_files_are_errors() {
        let bad_ca = TlsPolicy {
            verify_cert: true,
            ca_file: Some("/nonexistent/ca.pem".into()),
            ..TlsPolicy::default()
        };
        assert!(client_config(&bad_ca)
            .unwrap_err()
            .contains("/nonexistent/ca.pem"));
        let bad_cert = TlsPolicy {
            client_cert: Some("/nonexistent/cert.pem".into()),
            ..TlsPolicy::default()
        };
        assert!(client_config(&bad_cert).is_err());
    }
}
