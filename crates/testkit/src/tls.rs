//! Certificates made at test time (`rcgen`): a CA per test, and
//! certificates it signs for endpoints and proxies, written as PEM files.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use rpc_transport::tls::TlsFiles;

/// A certificate authority whose files live in a directory of the test's.
pub struct TestCa {
    dir: PathBuf,
    name: String,
    cert: Certificate,
    key: KeyPair,
}

impl TestCa {
    /// A new CA; its certificate goes to `{dir}/{name}-ca.pem`.
    pub fn new(dir: &Path, name: &str) -> TestCa {
        let key = KeyPair::generate().expect("CA key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, format!("{name} test CA"));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params.self_signed(&key).expect("CA certificate");
        let ca = TestCa {
            dir: dir.to_path_buf(),
            name: name.to_string(),
            cert,
            key,
        };
        std::fs::write(ca.ca_file(), ca.cert.pem()).expect("write CA");
        ca
    }

    /// The CA's certificate (PEM).
    pub fn ca_file(&self) -> PathBuf {
        self.dir.join(format!("{}-ca.pem", self.name))
    }

    /// A certificate for `who` naming `names` (IP addresses or DNS names),
    /// good for servers and clients alike: its certificate and key files.
    pub fn issue(&self, who: &str, names: &[&str]) -> (PathBuf, PathBuf) {
        let key = KeyPair::generate().expect("key");
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = CertificateParams::new(names).expect("params");
        params.distinguished_name.push(DnType::CommonName, who);
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let cert = params
            .signed_by(&key, &self.cert, &self.key)
            .expect("certificate");
        let cert_file = self.dir.join(format!("{}-{who}.pem", self.name));
        let key_file = self.dir.join(format!("{}-{who}.key", self.name));
        std::fs::write(&cert_file, cert.pem()).expect("write certificate");
        std::fs::write(&key_file, key.serialize_pem()).expect("write key");
        (cert_file, key_file)
    }

    /// An endpoint's keys: a certificate for 127.0.0.1 and localhost, and
    /// this CA as the one its clients must be signed by.
    pub fn server(&self, who: &str) -> TlsFiles {
        let (cert, key) = self.issue(who, &["127.0.0.1", "localhost"]);
        TlsFiles {
            cert: Some(cert),
            key: Some(key),
            client_ca: Some(self.ca_file()),
            ca: None,
        }
    }

    /// A proxy's keys: a client certificate, and this CA as the one
    /// endpoints must be signed by.
    pub fn client(&self, who: &str) -> TlsFiles {
        let (cert, key) = self.issue(who, &["localhost"]);
        TlsFiles {
            cert: Some(cert),
            key: Some(key),
            client_ca: None,
            ca: Some(self.ca_file()),
        }
    }

    /// A client certificate of this CA for a proxy that trusts `endpoints`'
    /// CA: a client of another fleet, which `endpoints`' servers refuse.
    pub fn client_trusting(&self, who: &str, endpoints: &TestCa) -> TlsFiles {
        let mut files = self.client(who);
        files.ca = Some(endpoints.ca_file());
        files
    }
}
