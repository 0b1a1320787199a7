//! The route's `buf.validate` rules at the request's stage: one message,
//! or each message of a stream, checked before it goes to the backend, and
//! every violation rendered as one 400 (`google.rpc.BadRequest`). The rules
//! themselves are compiled and walked in `crate::validate`.

use std::sync::Arc;

use bytes::Bytes;

use crate::error::Error;
use crate::snapshot::Route;

/// The route's `buf.validate` rules on the encoded request message: every
/// violation in one 400 (`google.rpc.BadRequest`), before the backend is
/// called. Routes without rules have no validator and pay one branch.
pub(crate) fn validate(route: &Route, message: &[u8]) -> Result<(), Error> {
    let Some(validator) = &route.validator else {
        return Ok(());
    };
    validator
        .check(message)
        .map_err(|violations| invalid(&route.label, validator, violations))
}

/// The 400 for `violations`, counted per route (by its template).
fn invalid(
    route: &Arc<str>,
    validator: &crate::validate::Validator,
    violations: Vec<crate::validate::Violation>,
) -> Error {
    metrics::counter!(
        crate::telemetry::metrics::VALIDATION_FAILURES,
        "route" => metrics::SharedString::from_shared(route.clone())
    )
    .increment(1);
    let first = &violations[0];
    let more = match violations.len() - 1 {
        0 => String::new(),
        1 => " (and 1 more violation)".to_owned(),
        n => format!(" (and {n} more violations)"),
    };
    let at = if first.field.is_empty() {
        String::new()
    } else {
        format!("{}: ", first.field)
    };
    Error::InvalidFields {
        message: format!(
            "the request does not satisfy the validation rules of {}: {at}{}{more}",
            validator.message().full_name(),
            first.description
        ),
        violations: violations
            .into_iter()
            .map(|v| crate::error::FieldViolation {
                field: v.field,
                description: v.description,
            })
            .collect(),
    }
}

/// A stream of request messages, each checked against the route's rules;
/// the first that breaks one ends the stream with the 400 (the messages
/// before it have gone to the backend, which the reset then cancels).
pub(crate) fn validated(
    route: &Route,
    messages: futures_util::stream::BoxStream<'static, Result<Bytes, Error>>,
) -> futures_util::stream::BoxStream<'static, Result<Bytes, Error>> {
    use futures_util::StreamExt as _;
    if route.validator.is_none() {
        return messages;
    }
    let route = RouteChecks::of(route);
    Box::pin(messages.map(move |m| m.and_then(|b| route.check(&b).map(|()| b))))
}

/// What checking a message needs of its route, owned, for the tasks that
/// outlive the request's borrow of it (streams, WebSocket readers).
#[derive(Clone)]
pub(crate) struct RouteChecks {
    validator: Option<Arc<crate::validate::Validator>>,
    label: Arc<str>,
}

impl RouteChecks {
    pub(crate) fn of(route: &Route) -> RouteChecks {
        RouteChecks {
            validator: route.validator.clone(),
            label: route.label.clone(),
        }
    }

    pub(crate) fn check(&self, message: &[u8]) -> Result<(), Error> {
        let Some(validator) = &self.validator else {
            return Ok(());
        };
        validator
            .check(message)
            .map_err(|violations| invalid(&self.label, validator, violations))
    }
}
