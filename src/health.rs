//! stagegate's own failures, noticed wherever they happen, ending the run as broken.
//!
//! A fault proxy that loses its port, a listener that runs out of file descriptors, a
//! driver whose sockets cannot be opened: none of these is the system under test's
//! doing, so none may become a verdict about it. Whoever notices one calls
//! [`Trouble::fail`]; the runner sees [`Trouble::failed`] fire, stops the stage, and the
//! run ends with exit code 4 and the first reason given.
//!
//! Not here: the measured lateness of stagegate's own schedule (send lag), which makes
//! criteria inconclusive rather than breaking the run.

use std::sync::{Arc, Mutex};

use tokio_util::sync::CancellationToken;

/// A handle to report the harness's own failures; cheap to clone.
#[derive(Clone, Default)]
pub struct Trouble {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    reason: Mutex<Option<String>>,
    failed: CancellationToken,
}

impl Trouble {
    /// A fresh handle, with nothing failed.
    pub fn new() -> Trouble {
        Trouble::default()
    }

    /// Reports a failure of stagegate itself; the first reason given is kept.
    pub fn fail(&self, reason: impl Into<String>) {
        let reason = reason.into();
        let mut slot = self.inner.reason.lock().unwrap_or_else(|p| p.into_inner());
        if slot.is_none() {
            tracing::error!(%reason, "stagegate itself failed");
            *slot = Some(reason);
        }
        self.inner.failed.cancel();
    }

    /// The first reason given, if anything failed.
    pub fn reason(&self) -> Option<String> {
        self.inner.reason.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Fires when something failed.
    pub fn failed(&self) -> &CancellationToken {
        &self.inner.failed
    }
}

/// Whether an I/O error is stagegate running out of its own resources (file descriptors,
/// local ports, memory for sockets) rather than something the other end did.
pub fn is_own_exhaustion(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(
            libc_codes::EMFILE
                | libc_codes::ENFILE
                | libc_codes::ENOBUFS
                | libc_codes::ENOMEM
                | libc_codes::EADDRNOTAVAIL
        )
    )
}

/// The same, for an error whose cause chain may hold such an I/O error (a client's).
pub fn chain_is_own_exhaustion(e: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            if is_own_exhaustion(io) {
                return Some(io.to_string());
            }
            // An I/O error wrapping another error hides it from `source()`.
            if let Some(inner) = io.get_ref()
                && let Some(found) = chain_is_own_exhaustion(inner)
            {
                return Some(found);
            }
        }
        cur = err.source();
    }
    None
}

/// The TLS error in an error's cause chain, said as stagegate's own failure to talk to
/// the target: a certificate it does not trust is a setting of the run (the CA to trust),
/// not a behaviour of the release, so it is no evidence either way.
pub fn chain_is_tls_refusal(e: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(tls) = err.downcast_ref::<rustls::Error>() {
            use rustls::{CertificateError as C, Error as E};
            let hint = match tls {
                E::InvalidCertificate(C::UnknownIssuer | C::BadSignature) => {
                    "; its certificate is signed by a CA stagegate does not trust: give that CA in SSL_CERT_FILE (a PEM file)"
                }
                E::InvalidCertificate(C::NotValidForName | C::NotValidForNameContext { .. }) => {
                    "; its certificate is not for the host named in base_url"
                }
                E::InvalidCertificate(C::Expired | C::ExpiredContext { .. }) => "; its certificate has expired",
                E::InvalidCertificate(C::Other(other)) if other.to_string().contains("CaUsedAsEndEntity") => {
                    "; it presents a CA certificate as its own (self-signed with CA:TRUE, as `openssl req -x509` makes by default): give it a server certificate signed by a CA, and that CA in SSL_CERT_FILE"
                }
                E::InvalidMessage(_) => "; the target does not answer TLS at that address (is it `http://`?)",
                _ => "",
            };
            return Some(format!("TLS with the target failed ({tls}){hint}"));
        }
        if let Some(inner) = err.downcast_ref::<std::io::Error>().and_then(|io| io.get_ref())
            && let Some(found) = chain_is_tls_refusal(inner)
        {
            return Some(found);
        }
        cur = err.source();
    }
    None
}

/// Raises this process's open-file limit to its hard limit: a load generator and its
/// proxies hold many sockets, and the default soft limit (often 1024) is low for that.
pub fn raise_file_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE)
        && soft < hard
    {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
}

/// The errno values that mean stagegate itself ran short (Linux numbering).
mod libc_codes {
    pub const ENOMEM: i32 = 12;
    pub const ENFILE: i32 = 23;
    pub const EMFILE: i32 = 24;
    pub const ENOBUFS: i32 = 105;
    pub const EADDRNOTAVAIL: i32 = 99;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_reason_is_kept() {
        let t = Trouble::new();
        assert!(!t.failed().is_cancelled());
        t.fail("the fault proxy for `store` lost its port");
        t.fail("something later");
        assert!(t.failed().is_cancelled());
        assert_eq!(t.reason().as_deref(), Some("the fault proxy for `store` lost its port"));
    }

    #[test]
    fn descriptor_exhaustion_is_ours() {
        assert!(is_own_exhaustion(&std::io::Error::from_raw_os_error(24)));
        assert!(!is_own_exhaustion(&std::io::Error::from_raw_os_error(111)), "connection refused is the other end's");
        let wrapped = std::io::Error::other(std::io::Error::from_raw_os_error(24));
        assert!(chain_is_own_exhaustion(&wrapped).is_some());
    }
}
