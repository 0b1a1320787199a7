//! `[openapi]`, read and checked at config load. Kept apart from the
//! document's rendering, which reads the snapshot this is part of.

use std::sync::OnceLock;

use bytes::Bytes;

use crate::config::{ConfigError, LoadedFile};
use crate::routing::{Lookup, Matcher};

/// `[openapi]`, checked, plus the document once rendered.
#[derive(Debug, Default)]
pub struct Settings {
    pub path: Option<String>,
    pub docs_path: Option<String>,
    pub title: String,
    pub version: String,
    pub description: Option<String>,
    /// Replies use proto field names (`server.proto_field_names`).
    pub proto_field_names: bool,
    pub(super) rendered: OnceLock<Bytes>,
}

impl Settings {
    /// Reads `[openapi]`; a path that a route would also match is an error.
    pub fn from_config<T>(
        file: &LoadedFile,
        matcher: &Matcher<T>,
        errors: &mut Vec<ConfigError>,
    ) -> Settings {
        let c = &file.config.openapi;
        let mut check = |value: &Option<toml::Spanned<String>>, key: &str| -> Option<String> {
            let v = value.as_ref()?;
            let p = v.get_ref().trim();
            if !p.starts_with('/') || p.contains(['?', '#', '{', '}']) {
                errors.push(file.error(
                    v,
                    key,
                    format!("\"{p}\" is not a plain path; write e.g. \"/openapi.json\""),
                ));
                return None;
            }
            if let Lookup::Found { .. } = matcher.lookup("GET", p) {
                errors.push(file.error(
                    v,
                    key,
                    format!("\"{p}\" is also matched by a GET route; choose another path"),
                ));
                return None;
            }
            Some(p.to_owned())
        };
        let path = check(&c.path, "openapi.path");
        let docs_path = check(&c.docs_path, "openapi.docs_path");
        if let (Some(d), None) = (&c.docs_path, &c.path) {
            errors.push(file.error(
                d,
                "openapi.docs_path",
                "the documentation page loads the document from openapi.path; set that too",
            ));
        }
        Settings {
            path,
            docs_path,
            title: c.title.clone().unwrap_or_else(|| "API".to_owned()),
            version: c.version.clone().unwrap_or_else(|| "1.0.0".to_owned()),
            description: c.description.clone(),
            proto_field_names: file.config.server.proto_field_names,
            rendered: OnceLock::new(),
        }
    }
}
