use prost_reflect::{DynamicMessage, MethodDescriptor};

/// A `google.api.http` rule reduced to what routing needs.
///
/// Owned strings rather than the DynamicMessage so routing code neither
/// depends on prost-reflect nor re-parses the oneof on every lookup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpRule {
    /// "GET", "PUT", "POST", "DELETE", "PATCH", or a custom kind as written.
    pub method: String,
    pub path: String,
    pub body: String,
    pub response_body: String,
    pub additional_bindings: Vec<HttpRule>,
}

/// The standard verbs of the `pattern` oneof, in field-number order.
const VERBS: &[(&str, &str)] = &[
    ("get", "GET"),
    ("put", "PUT"),
    ("post", "POST"),
    ("delete", "DELETE"),
    ("patch", "PATCH"),
];

/// The method's google.api.http annotation, if any.
///
/// Goes through the method's own pool, so it also works when a descriptor
/// set carried its own (older) copy of google/api/http.proto.
pub fn http_rule(method: &MethodDescriptor) -> Option<HttpRule> {
    let extension = method
        .parent_pool()
        .get_extension_by_name("google.api.http")?;
    let options = method.options();
    if !options.has_extension(&extension) {
        return None;
    }
    let value = options.get_extension(&extension);
    let rule = rule_from_message(value.as_message()?);
    if rule.is_none() {
        tracing::warn!(
            method = method.full_name(),
            "google.api.http annotation has no get/put/post/delete/patch/custom pattern; ignoring it"
        );
    }
    rule
}

fn rule_from_message(msg: &DynamicMessage) -> Option<HttpRule> {
    let (method, path) = pattern(msg)?;
    let additional_bindings = msg
        .get_field_by_name("additional_bindings")
        .and_then(|v| {
            v.as_list().map(|list| {
                list.iter()
                    .filter_map(|b| b.as_message().and_then(rule_from_message))
                    .collect()
            })
        })
        .unwrap_or_default();
    Some(HttpRule {
        method,
        path,
        body: string_field(msg, "body"),
        response_body: string_field(msg, "response_body"),
        additional_bindings,
    })
}

fn pattern(msg: &DynamicMessage) -> Option<(String, String)> {
    for (field, verb) in VERBS {
        // Oneof members have presence, so an explicitly empty path still counts.
        if msg.has_field_by_name(field) {
            return Some(((*verb).to_owned(), string_field(msg, field)));
        }
    }
    if msg.has_field_by_name("custom") {
        let custom = msg.get_field_by_name("custom")?;
        let custom = custom.as_message()?;
        let kind = string_field(custom, "kind");
        if !kind.is_empty() {
            return Some((kind, string_field(custom, "path")));
        }
    }
    None
}

/// Missing fields read as empty: older copies of http.proto lack `response_body`.
fn string_field(msg: &DynamicMessage, name: &str) -> String {
    msg.get_field_by_name(name)
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}
