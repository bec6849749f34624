//! An HTTP system under test: writing each record as a request built from templates, and
//! reading records back by key.
//!
//! Templates use Jinja syntax (minijinja) over `record` (the record), `key` (its key)
//! and `flags` (the record's flag values): `{{ record | json }}`, `/orders/{{ key }}`.
//! [`WriteTemplate`] compiles a request (the `write`, or the `read` that
//! [`super::observe::ReadObserver`] sends per key) once and renders it per record.

use std::collections::BTreeMap;

use minijinja::Environment;
use serde_json::{Map, Value};

use super::RequestTemplate;

/// A request, rendered.
#[derive(Debug, Clone, PartialEq)]
pub struct Rendered {
    pub method: reqwest::Method,
    /// Path and query, to append to the base URL.
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Option<String>,
}

/// A compiled request template.
pub struct WriteTemplate {
    env: Environment<'static>,
    method: reqwest::Method,
    headers: Vec<String>,
    has_body: bool,
    /// The body is the record as JSON (`{{ record | json }}`): serialised directly.
    record_body: bool,
    /// The path, when it holds no template: used as it is.
    static_path: Option<String>,
    /// Whether any part reads `flags`.
    reads_flags: bool,
    /// What it was compiled from: the template, the common headers, the default body.
    source: (RequestTemplate, BTreeMap<String, String>, Option<String>),
}

/// Whether a template source holds anything to render.
fn is_template(source: &str) -> bool {
    source.contains("{{") || source.contains("{%")
}

/// The body template most targets use.
pub const RECORD_JSON: &str = "{{ record | json }}";

fn environment() -> Environment<'static> {
    let mut env = Environment::new();
    // Values print as JSON scalars print (`true`, `null`), which is what URLs and bodies
    // of JSON services expect; everything else as usual.
    env.set_formatter(|out, state, value| match value.kind() {
        minijinja::value::ValueKind::Bool => {
            out.write_str(if value.is_true() { "true" } else { "false" }).map_err(minijinja::Error::from)
        }
        minijinja::value::ValueKind::None | minijinja::value::ValueKind::Undefined if !value.is_undefined() => {
            out.write_str("null").map_err(minijinja::Error::from)
        }
        _ => minijinja::escape_formatter(out, state, value),
    });
    env.add_filter("json", |v: minijinja::Value| -> Result<String, minijinja::Error> {
        serde_json::to_string(&v)
            .map_err(|e| minijinja::Error::new(minijinja::ErrorKind::InvalidOperation, e.to_string()))
    });
    env
}

impl WriteTemplate {
    /// Compiles `t` with the target's common `headers`; `default_body` is used when `t`
    /// has none (`{{ record | json }}` for writes).
    pub fn compile(
        t: &RequestTemplate,
        headers: &BTreeMap<String, String>,
        default_body: Option<&str>,
    ) -> Result<Self, String> {
        let mut env = environment();
        let method = reqwest::Method::from_bytes(t.method.as_bytes()).map_err(|e| e.to_string())?;
        env.add_template_owned("path".to_string(), t.path.clone()).map_err(|e| format!("path: {e}"))?;
        let body = t.body.clone().or(default_body.map(String::from));
        if let Some(b) = &body {
            env.add_template_owned("body".to_string(), b.clone()).map_err(|e| format!("body: {e}"))?;
        }
        let mut names = Vec::new();
        for (name, value) in headers.iter().chain(&t.headers) {
            env.add_template_owned(format!("header:{name}"), value.clone())
                .map_err(|e| format!("header {name}: {e}"))?;
            names.push(name.clone());
        }
        let record_body = body.as_deref().map(str::trim) == Some(RECORD_JSON);
        let static_path = (!is_template(&t.path)).then(|| t.path.clone());
        let reads_flags = env.templates().any(|(_, t)| t.source().contains("flags"));
        Ok(WriteTemplate {
            env,
            method,
            headers: names,
            has_body: body.is_some(),
            record_body,
            static_path,
            reads_flags,
            source: (t.clone(), headers.clone(), default_body.map(String::from)),
        })
    }

    /// What it was compiled from (a load worker compiles the same).
    pub fn source(&self) -> &(RequestTemplate, BTreeMap<String, String>, Option<String>) {
        &self.source
    }

    /// Whether any part of the request reads `flags` (so the driver can skip computing them).
    pub fn uses_flags(&self) -> bool {
        self.reads_flags
    }

    /// Renders the request for one record.
    pub fn render(&self, record: &Map<String, Value>, key: &str, flags: &Value) -> Result<Rendered, String> {
        // The common case (a fixed path, the record as the body, no headers) needs no
        // template engine at all: it runs once per request on the driver's hot path.
        if let (Some(path), true, true) =
            (&self.static_path, self.record_body || !self.has_body, self.headers.is_empty())
        {
            return Ok(Rendered {
                method: self.method.clone(),
                path: path.clone(),
                headers: Vec::new(),
                body: self.has_body.then(|| serde_json::to_string(record).unwrap_or_default()),
            });
        }
        let ctx = minijinja::context! {
            record => minijinja::Value::from(minijinja::value::Serde(record)),
            key => key,
            flags => minijinja::Value::from(minijinja::value::Serde(flags)),
        };
        let get = |name: &str| -> Result<String, String> {
            self.env.get_template(name).and_then(|t| t.render(&ctx)).map_err(|e| format!("{name}: {e}"))
        };
        let headers = self
            .headers
            .iter()
            .map(|n| get(&format!("header:{n}")).map(|v| (n.clone(), v)))
            .collect::<Result<_, _>>()?;
        Ok(Rendered {
            method: self.method.clone(),
            path: get("path")?,
            headers,
            body: match (self.has_body, self.record_body) {
                (false, _) => None,
                (true, true) => Some(serde_json::to_string(record).unwrap_or_default()),
                (true, false) => Some(get("body")?),
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn renders_path_body_and_headers() {
        let t = RequestTemplate {
            method: "PUT".into(),
            path: "/orders/{{ key }}?v={{ flags['new-enricher'] }}".into(),
            body: None,
            headers: BTreeMap::from([("X-Customer".to_string(), "{{ record.customer }}".to_string())]),
        };
        let common = BTreeMap::from([("Authorization".to_string(), "Bearer t0k".to_string())]);
        let w = WriteTemplate::compile(&t, &common, Some("{{ record | json }}")).unwrap();
        let record = json!({"order_id": "a1", "customer": "Ann", "n": 3}).as_object().unwrap().clone();
        let r = w.render(&record, "a1", &json!({"new-enricher": true})).unwrap();
        assert_eq!(r.method, reqwest::Method::PUT);
        assert_eq!(r.path, "/orders/a1?v=true");
        let body: Value = serde_json::from_str(r.body.as_deref().unwrap()).unwrap();
        assert_eq!(body, Value::Object(record));
        assert!(r.headers.contains(&("X-Customer".into(), "Ann".into())));
        assert!(r.headers.contains(&("Authorization".into(), "Bearer t0k".into())));
    }

    #[test]
    fn a_broken_template_is_reported() {
        let t =
            RequestTemplate { method: "POST".into(), path: "/x/{{ key".into(), body: None, headers: BTreeMap::new() };
        let err = WriteTemplate::compile(&t, &BTreeMap::new(), None).err().expect("a syntax error");
        assert!(err.starts_with("path:"), "{err}");
    }
}
