//! The fault proxies in front of one place, a dependency or the target.
//!
//! A [`Gate`] holds a TCP proxy, an HTTP proxy, or both chained with the TCP proxy on
//! the outside: the caller connects to the TCP proxy, which forwards to the HTTP proxy,
//! which forwards to the real service. Connection faults (reset, refuse, bandwidth...)
//! then reach the caller exactly as they would from the network, and request faults
//! (`http_error`, latency by `match`) act on each request that gets through. Only the
//! proxies a scenario's faults need are started, so a place without HTTP faults pays
//! for no HTTP hop.

use std::net::SocketAddr;

use super::http::HttpProxy;
use super::proxy::Proxy;
use super::{Activation, Fault, FaultKind};
use crate::health::Trouble;

/// Where a fault acts: on each request (`true`) or on the byte stream.
///
/// `latency` acts per request when it has a `match`, or at the target, whose latency is
/// a request's; elsewhere it holds each chunk of the stream.
pub fn per_request(fault: &Fault, latency_per_request: bool) -> bool {
    match fault.kind {
        FaultKind::HttpError { .. } => true,
        FaultKind::Latency { .. } => fault.predicate.is_some() || latency_per_request,
        _ => false,
    }
}

/// The proxies in front of one place.
pub struct Gate {
    name: String,
    tcp: Option<Proxy>,
    http: Option<HttpProxy>,
    upstream: std::sync::Mutex<SocketAddr>,
    latency_per_request: bool,
}

/// Which proxies a place needs, given every fault a scenario puts there.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Needs {
    pub tcp: bool,
    pub http: bool,
}

impl Needs {
    /// What `faults` (all at one place) need; `always_tcp` for dependencies, whose
    /// callers are always given a proxy address.
    pub fn of<'a>(faults: impl IntoIterator<Item = &'a Fault>, latency_per_request: bool, always_tcp: bool) -> Needs {
        let mut needs = Needs { tcp: always_tcp, http: false };
        for f in faults {
            if per_request(f, latency_per_request) {
                needs.http = true;
            } else if f.kind.runs_in_proxy() {
                needs.tcp = true;
            }
        }
        needs
    }
}

impl Gate {
    /// Starts the proxies `needs` asks for in front of `upstream`, named `name` in the
    /// TCP proxy's logs. The HTTP proxy forwards to `base` (`http://` plus the upstream
    /// address unless given, e.g. for an `https://` service). The proxies' own failures
    /// go to `trouble`. The proxies run on threads of their own ([`crate::threads`]).
    pub async fn start(
        name: &str,
        upstream: SocketAddr,
        base: Option<&str>,
        needs: Needs,
        latency_per_request: bool,
        trouble: Option<Trouble>,
    ) -> std::io::Result<Gate> {
        let base = base.map_or_else(|| format!("http://{upstream}"), str::to_string);
        let name = name.to_string();
        crate::threads::run_on(
            crate::threads::proxies(),
            Gate::start_here(name, upstream, base, needs, latency_per_request, trouble),
        )
        .await
    }

    async fn start_here(
        name: String,
        upstream: SocketAddr,
        base: String,
        needs: Needs,
        latency_per_request: bool,
        trouble: Option<Trouble>,
    ) -> std::io::Result<Gate> {
        let name = name.as_str();
        let http = if needs.http { Some(HttpProxy::start(&base, trouble.clone()).await?) } else { None };
        let next = http.as_ref().map_or(upstream, |h| h.addr());
        let tcp = if needs.tcp {
            let any_port = SocketAddr::from(([127, 0, 0, 1], 0));
            match Proxy::start_at(name, any_port, next, trouble).await {
                Ok(p) => Some(p),
                Err(e) => {
                    if let Some(h) = http {
                        h.stop(true).await;
                    }
                    return Err(e);
                }
            }
        } else {
            None
        };
        Ok(Gate { name: name.to_string(), tcp, http, upstream: std::sync::Mutex::new(upstream), latency_per_request })
    }

    /// The address callers are given: the outermost proxy's, or the service's own when
    /// nothing is in front.
    pub fn addr(&self) -> SocketAddr {
        match (&self.tcp, &self.http) {
            (Some(t), _) => t.addr(),
            (None, Some(h)) => h.addr(),
            (None, None) => self.upstream(),
        }
    }

    /// The real service's address, behind every proxy.
    pub fn upstream(&self) -> SocketAddr {
        *self.upstream.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Points the gate at a service that came back at another address (a restarted
    /// container). Only a TCP proxy can follow; the HTTP proxy keeps its upstream.
    pub fn set_upstream(&self, upstream: SocketAddr) {
        *self.upstream.lock().unwrap_or_else(|p| p.into_inner()) = upstream;
        if let Some(t) = &self.tcp
            && self.http.is_none()
        {
            t.set_upstream(upstream);
        }
    }

    /// Whether an HTTP proxy stands in front of the service (which then speaks plain
    /// HTTP to its callers, whatever the service speaks).
    pub fn speaks_http(&self) -> bool {
        self.http.is_some()
    }

    /// Whether one of the proxies here can carry `fault` out.
    pub fn carries(&self, fault: &Fault) -> bool {
        if per_request(fault, self.latency_per_request) {
            self.http.is_some()
        } else {
            self.tcp.is_some() && fault.kind.runs_in_proxy()
        }
    }

    /// Replaces the active faults, each sent to the proxy that carries it out.
    pub fn set_active(&self, faults: Vec<Activation>) {
        let (requests, stream): (Vec<Activation>, Vec<Activation>) =
            faults.into_iter().partition(|a| per_request(&a.fault, self.latency_per_request));
        if let Some(h) = &self.http {
            h.set_active(requests);
        }
        if let Some(t) = &self.tcp {
            t.set_active(stream);
        }
    }

    /// How late both proxies released what they held since the last call.
    pub fn take_hold_overruns(&self) -> hdrhistogram::Histogram<u64> {
        let mut all = crate::measure::new_histogram();
        if let Some(t) = &self.tcp {
            let _ = all.add(t.stats().hold_overrun.take());
        }
        if let Some(h) = &self.http {
            let _ = all.add(h.take_hold_overruns());
        }
        all
    }

    /// Whether any fault is active in either proxy.
    pub fn is_faulted(&self) -> bool {
        self.tcp.as_ref().is_some_and(|t| t.is_faulted()) || self.http.as_ref().is_some_and(|h| h.is_faulted())
    }
}

#[async_trait::async_trait]
impl crate::teardown::Resource for Gate {
    fn label(&self) -> String {
        format!("the fault proxy for `{}`", self.name)
    }

    fn lift(&self) {
        self.set_active(Vec::new());
    }

    /// Lifts every fault and stops both proxies, the outer one first.
    async fn stop(&self, forced: bool) {
        self.set_active(Vec::new());
        if let Some(t) = &self.tcp {
            t.stop().await;
        }
        if let Some(h) = &self.http {
            h.stop(forced).await;
        }
    }

    fn stop_now(&self) {
        if let Some(t) = &self.tcp {
            t.stop_now();
        }
        if let Some(h) = &self.http {
            h.stop_now();
        }
    }
}
